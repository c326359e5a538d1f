"""Feedback semantics: what each event type does to a user's next answer.

Each positive event goes to the worker with its type weight
(recgen/core/feedback.py, the table export shares) and its time; DISMISS
never brings the item back for this user. The worker adds the history the
model version holds for the user, decays every weight by its age before the
user's newest event (half-life 90 days, never below 1e-3:
recgen/core/user_history.py, the definition export uses too) and folds in
with confidences c = 1 + α·w, the same form as training. Only the newest
HISTORY_CAP events are read per request: one user cannot make requests
expensive; older events still exclude their items. Pure functions: no I/O here.
"""

from __future__ import annotations

from recgen.core.feedback import type_weight
from recgen.core.user_history import HISTORY_CAP
from server.state import Event

__all__ = ["HISTORY_CAP", "history_events"]


def history_events(events: list[Event], cap: int = HISTORY_CAP) -> list[tuple[str, float, float]]:
    """[(item_id, weight before decay, time)] newest first, one entry per positive event
    of the newest `cap`."""
    out = []
    for ev in events[:cap]:
        w = type_weight(ev.type, ev.value)
        if w > 0:
            out.append((ev.item_id, w, ev.ts))
    return out
