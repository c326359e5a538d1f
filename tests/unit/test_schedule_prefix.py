"""worker/llm/schedule.py with a cached prompt prefix: budgets count the tokens a prefill feeds
(after the prefix), and one call holds prompts of one kind (all reuse the prefix, or none)."""

from __future__ import annotations

from collections import deque

import numpy as np

from worker.llm.batch import Request
from worker.llm.schedule import PrefillPolicy

PREFIX = (7, 8, 9, 10)


def _queue(*prompts: list[int]) -> deque[Request]:
    rng = np.random.default_rng(0)
    return deque(
        Request(None, p, 10, 0.0, 1.0, rng, float("inf"), None)  # type: ignore[arg-type]
        for p in prompts
    )


def _shared(n: int) -> list[int]:
    return [*PREFIX, *([1] * (n - len(PREFIX)))]


def test_budget_counts_the_tokens_after_the_cached_prefix() -> None:
    policy = PrefillPolicy(max_seqs=8, max_prefill_tokens=100, prefill_budget=100, prefix=PREFIX)
    assert policy.fed(_shared(30)) == (26, True) and policy.fed([1] * 30) == (30, False)
    assert policy.fed(list(PREFIX)) == (4, False)  # nothing after it: fed whole, as the session does
    # Four prompts of 28 tokens feed 24 each (4 x 24 = 96 <= 100); without the prefix, 3 x 28.
    waiting = _queue(*(_shared(28) for _ in range(5)))
    assert [len(c) for c in policy.admit(waiting, rows=0, widest=0)] == [4] and len(waiting) == 1
    plain = PrefillPolicy(max_seqs=8, max_prefill_tokens=100, prefill_budget=100)
    assert [len(c) for c in plain.admit(_queue(*(_shared(28) for _ in range(5))), 0, 0)] == [3]
    # The KV bound still counts whole prompts (the cache rows hold the prefix too).
    tight = PrefillPolicy(max_seqs=8, max_batch_tokens=3 * 38, max_prefill_tokens=100, prefix=PREFIX)
    assert [len(c) for c in tight.admit(_queue(*(_shared(28) for _ in range(5))), 0, 0)] == [3]


def test_a_call_holds_prompts_of_one_kind_in_order() -> None:
    policy = PrefillPolicy(max_seqs=8, max_prefill_tokens=200, prefill_budget=400, prefix=PREFIX)
    waiting = _queue(_shared(20), _shared(20), [1] * 20, _shared(20), [2] * 20)
    calls = policy.admit(waiting, rows=0, widest=0)
    kinds = [[policy.fed(r.prompt)[1] for r in c] for c in calls]
    assert kinds == [[True, True], [False], [True], [False]] and not waiting
