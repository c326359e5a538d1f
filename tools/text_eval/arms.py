"""The configurations compared ("arms") and the one call that writes a case's text under each.

Every arm is a `worker.explain.TextOptions` (the worker's own text path, worker/explain.py):

* baseline: today's prompt and decoder: style "plain" (recgen/core/prompt.py's prompt and its
  primer "You will enjoy"), constrained=False (free decoding, no title constraint), check=True
  (the grounding check on the stream); the leak / claim cut is off for plain (`cut=None`).
* plain: style "plain" with the defaults otherwise (title-constrained decoding); opt-in
  (--arms baseline,plain,default).
* default: `TextOptions()`, the served default.
* facts-first: the default with the outline message in its order before the shared head
  (recgen/core/explain_outline.py `shared_first=False`: facts first, task last); its prompts do
  not start with the cached prefix, so each is prefilled whole, as before: the before/after arm
  of that change; opt-in.

`plan(...)` fixes what a case's text is judged against (the prompt's instruction sentences and
the opening we wrote, which the leak check skips, as worker/explain.py's gate does);
`stream(...)` yields the SafeText / TextDone events of the text; `resolve(arm)` states the
configuration. This module measures nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tools.text_eval.rank import Shown
from worker.explain import TextOptions, TextPlan, explain, plan_text
from worker.llm.grounded import TextEvent
from worker.model import LoadedModel


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)  # TextOptions fields; {} = the defaults


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm(
            "baseline",
            "today's prompt and decoder: plain prompt, free decoding, grounding check on, no cut",
            {"style": "plain", "constrained": False, "check": True},
        ),
        Arm("plain", "plain prompt, title-constrained decoding", {"style": "plain"}),
        Arm("default", "the served default, TextOptions()"),
        Arm(
            "facts-first",
            "the served default with the outline's order before the shared head (facts first, task"
            " last): every prompt prefilled whole, as before the prefix cache",
            {"shared_first": False},
        ),
        Arm(
            "unconstrained",
            "the served default without title-constrained decoding (what the constraint costs)",
            {"constrained": False},
        ),
    )
}
DEFAULT_ARM = "default"
DEFAULT_ARMS = ("baseline", "default")


@dataclass(frozen=True)
class CasePlan:
    """What one case's text is judged against, and the plan it is written from."""

    instructions: tuple[str, ...]  # the prompt's instruction sentences (leak check)
    floor: int  # chars of the opening we wrote: not judged for leaks
    text_plan: TextPlan


def resolve(arm: Arm, max_new_tokens: int) -> dict[str, Any]:
    """The configuration an arm runs (what the report states)."""
    opts = options(arm, max_new_tokens)
    return {**dataclasses.asdict(opts), "cuts": opts.cuts}


def options(arm: Arm, max_new_tokens: int) -> TextOptions:
    return TextOptions(**{"max_new_tokens": max_new_tokens, **arm.options})


def plan(model: LoadedModel, shown: Shown, arm: Arm, max_new_tokens: int) -> CasePlan:
    c = shown.case
    p = plan_text(model, shown.history_rows, shown.rec_rows, c.intent, c.locale, options(arm, max_new_tokens))
    return CasePlan(p.instructions, p.floor, p)


async def stream(
    model: LoadedModel, shown: Shown, arm: Arm, case_plan: CasePlan, *, max_new_tokens: int, deadline: float
) -> AsyncIterator[TextEvent]:
    """One case's text under `arm`: SafeText pieces, then one TextDone."""
    c = shown.case
    opts = options(arm, max_new_tokens)
    async for ev in explain(
        model,
        shown.history_rows,
        shown.rec_rows,
        c.intent,
        c.locale,
        opts,
        deadline,
        plan=case_plan.text_plan,
    ):
        yield ev
