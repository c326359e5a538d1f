"""Feedback semantics: what each event type does to a user's next answer.

| type     | effect                                                      |
|----------|-------------------------------------------------------------|
| VIEW     | weak positive, weight 0.25                                   |
| CLICK    | positive, weight 1 (= one training interaction)              |
| PURCHASE | strong positive, weight 3                                    |
| RATE     | weight value/4, clipped to [0.25, 1.25] (5 stars → 1.25)     |
| DISMISS  | the item never comes back for this user; no weight           |

Weights decay with the event's age at request time, half-life 90 days, so
recent events weigh more; the decay factor never goes below 1e-3, so an old
event fades but is never dropped. Events of the same item add up. Only the newest
HISTORY_CAP events are read per request: one user cannot make requests
expensive. The worker turns weights into fold-in confidences c = 1 + α·w,
the same form as training. Pure functions: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from server.state import Event

HISTORY_CAP = 200
HALF_LIFE_DAYS = 90.0
DECAY_FLOOR = 1e-3  # an old event fades but never vanishes (it still says what the user chose)
TYPE_WEIGHTS = {"VIEW": 0.25, "CLICK": 1.0, "PURCHASE": 3.0}
POSITIVE_TYPES = ("VIEW", "CLICK", "PURCHASE", "RATE")


@dataclass(frozen=True)
class Semantics:
    half_life_days: float = HALF_LIFE_DAYS
    history_cap: int = HISTORY_CAP


def event_weight(ev: Event) -> float:
    if ev.type == "RATE":
        return min(max((ev.value or 0.0) / 4.0, 0.25), 1.25)
    return TYPE_WEIGHTS.get(ev.type, 0.0)


def history_weights(events: list[Event], now: float, sem: Semantics | None = None) -> list[tuple[str, float]]:
    """[(item_id, weight)] newest first, one entry per item, weights summed."""
    sem = sem or Semantics()
    out: dict[str, float] = {}
    half_life = sem.half_life_days * 86400.0
    for ev in events[: sem.history_cap]:
        w = event_weight(ev)
        if w <= 0:
            continue
        age = max(0.0, now - ev.ts)
        out[ev.item_id] = out.get(ev.item_id, 0.0) + w * max(0.5 ** (age / half_life), DECAY_FLOOR)
    return list(out.items())  # dicts keep first-insertion order: newest first
