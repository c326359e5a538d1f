"""Admission: which waiting requests are prefilled before the next decode step, in which calls.

The running batch is bounded by sequences (`max_seqs`) and by KV tokens
(`max_batch_tokens`: rows × the longest prompt + max_new_tokens among them).
Between two decode steps the engine prefills up to `prefill_budget` padded
prompt tokens, in calls of at most `max_prefill_tokens` padded tokens each.

Decode first, one call per step, by default (`prefill_budget` =
`max_prefill_tokens` = 512): a newcomer's first *visible* text needs its
prefill and then several decode steps (a title is held back until it is
complete), so what matters is that decode steps keep coming while prefills
are bounded between them. Prefilling more per step, vLLM-style prefill-first,
was measured worse here: on one 1-thread generator with 16 closed-loop clients
(time on the scheduler thread's CPU clock, which other jobs move less than the
wall clock; one run each), the 4th token p50 / p99 was 819 / 1,470 ms with one 512-token call per step,
956 / 1,758 with calls of 256 up to 1,024 per step, 988 / 1,567 with 512 up to
2,048, and 1,111 / 1,708 with one 256-token call (docs/bench.md). The budget
stays a knob because the right value depends on how many decode steps the first
text needs.

FIFO: the head of the queue is never overtaken, so a long prompt is never
starved; a single prompt longer than a call's budget is still prefilled,
alone. This module only decides; it runs nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from worker.llm.batch import Request


@dataclass(frozen=True)
class PrefillPolicy:
    max_seqs: int  # rows in the running batch (WorkerConfig.max_seqs: the one default)
    max_batch_tokens: int = 4096  # KV budget: rows × the widest (prompt + max_new_tokens)
    max_prefill_tokens: int = 512  # padded prompt tokens per prefill call
    prefill_budget: int = 512  # padded prompt tokens prefilled between two decode steps

    def __post_init__(self) -> None:
        assert self.max_seqs >= 1 and self.max_prefill_tokens >= 1, self
        assert self.prefill_budget >= self.max_prefill_tokens, (
            f"prefill_budget {self.prefill_budget} < max_prefill_tokens {self.max_prefill_tokens}"
        )

    def admit(self, waiting: deque[Request], rows: int, widest: int) -> list[list[Request]]:
        """Pop the requests to prefill now from the head of `waiting`, grouped into calls.

        rows: sequences running; widest: their largest prompt + max_new_tokens (0 if none).
        """
        calls: list[list[Request]] = []
        group: list[Request] = []
        longest = 0  # the current call's longest prompt
        spent = 0  # padded tokens of the calls already closed
        while waiting:
            req = waiting[0]
            n, w, length = rows + 1, max(widest, req.need), len(req.prompt)
            if n > self.max_seqs or n * w > self.max_batch_tokens:
                break  # head-of-line waits for room: FIFO, so a long request is never starved
            if group and (len(group) + 1) * max(longest, length) > self.max_prefill_tokens:
                calls.append(group)
                spent += len(group) * longest
                group, longest = [], 0
            padded = (len(group) + 1) * max(longest, length)
            if (calls or group) and spent + padded > self.prefill_budget:
                break
            group.append(waiting.popleft())
            rows, widest, longest = n, w, max(longest, length)
        if group:
            calls.append(group)
        return calls
