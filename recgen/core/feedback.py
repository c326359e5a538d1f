"""Feedback weights: what each event type is worth to a user's vector.

| type     | weight                                                      |
|----------|-------------------------------------------------------------|
| VIEW     | weak positive, 0.25                                          |
| CLICK    | positive, 1 (= one training interaction)                     |
| PURCHASE | strong positive, 3                                           |
| RATE     | value/4, clipped to [0.25, 1.25] (5 stars → 1.25)            |
| DISMISS  | none: the item never comes back for this user                |

The gateway sends each positive event with its type weight; export folds the
positive types (POSITIVE_TYPES) into the next training set. The decay by age
is recgen/core/user_history.py. Pure functions of a type and a value: knows
nothing of the state store's events or of gRPC.
"""

from __future__ import annotations

TYPE_WEIGHTS = {"VIEW": 0.25, "CLICK": 1.0, "PURCHASE": 3.0}
POSITIVE_TYPES = ("VIEW", "CLICK", "PURCHASE", "RATE")


def type_weight(type_: str, value: float | None) -> float:
    """An event's weight before decay; 0 for a type that is not positive (DISMISS)."""
    if type_ == "RATE":
        return min(max((value or 0.0) / 4.0, 0.25), 1.25)
    return TYPE_WEIGHTS.get(type_, 0.0)
