"""Feedback semantics: what each event type does to a user's next answer.

| type     | effect                                                      |
|----------|-------------------------------------------------------------|
| VIEW     | weak positive, weight 0.25                                   |
| CLICK    | positive, weight 1 (= one training interaction)              |
| PURCHASE | strong positive, weight 3                                    |
| RATE     | weight value/4, clipped to [0.25, 1.25] (5 stars → 1.25)     |
| DISMISS  | the item never comes back for this user; no weight           |

The gateway sends each positive event with its type weight and its time;
the worker adds the history the model version holds for the user, decays
every weight by its age before the user's newest event (half-life 90 days,
never below 1e-3: recgen/core/user_history.py, the definition export uses too)
and folds in with confidences c = 1 + α·w, the same form as training. Only
the newest HISTORY_CAP events are read per request: one user cannot make
requests expensive; older events still exclude their items. Pure functions:
no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from recgen.core.user_history import HISTORY_CAP
from server.state import Event

TYPE_WEIGHTS = {"VIEW": 0.25, "CLICK": 1.0, "PURCHASE": 3.0}
POSITIVE_TYPES = ("VIEW", "CLICK", "PURCHASE", "RATE")

__all__ = ["HISTORY_CAP", "POSITIVE_TYPES", "TYPE_WEIGHTS", "Semantics", "event_weight", "history_events"]


@dataclass(frozen=True)
class Semantics:
    history_cap: int = HISTORY_CAP


def event_weight(ev: Event) -> float:
    if ev.type == "RATE":
        return min(max((ev.value or 0.0) / 4.0, 0.25), 1.25)
    return TYPE_WEIGHTS.get(ev.type, 0.0)


def history_events(events: list[Event], sem: Semantics | None = None) -> list[tuple[str, float, float]]:
    """[(item_id, weight before decay, time)] newest first, one entry per positive event."""
    sem = sem or Semantics()
    out = []
    for ev in events[: sem.history_cap]:
        w = event_weight(ev)
        if w > 0:
            out.append((ev.item_id, w, ev.ts))
    return out
