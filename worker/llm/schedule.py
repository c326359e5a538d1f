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

Cached prefix (`prefix`, worker/llm/session.py `cache_prefix`): a prompt that
starts with it is fed without it, so it costs its tokens after the prefix; a
call feeds the prefix's past only when every prompt in it starts with the
prefix, so a call holds prompts of one kind (a prompt of the other kind closes
it, FIFO still).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from worker.llm.batch import Request


@dataclass(frozen=True)
class PrefillPolicy:
    max_seqs: int  # rows in the running batch (WorkerConfig.max_seqs: the one default)
    max_batch_tokens: int = 4096  # KV budget: rows × the widest (prompt + max_new_tokens)
    max_prefill_tokens: int = 512  # padded prompt tokens per prefill call
    prefill_budget: int = 512  # padded prompt tokens prefilled between two decode steps
    # Token ids whose KV is cached: not fed again (see the module doc); logged as its length.
    prefix: tuple[int, ...] = field(default=(), repr=False)

    def __repr__(self) -> str:
        return (
            f"PrefillPolicy(max_seqs={self.max_seqs}, max_batch_tokens={self.max_batch_tokens}, "
            f"max_prefill_tokens={self.max_prefill_tokens}, prefill_budget={self.prefill_budget}, "
            f"cached prefix={len(self.prefix)} tokens)"
        )

    def __post_init__(self) -> None:
        assert self.max_seqs >= 1 and self.max_prefill_tokens >= 1, self
        assert self.prefill_budget >= self.max_prefill_tokens, (
            f"prefill_budget {self.prefill_budget} < max_prefill_tokens {self.max_prefill_tokens}"
        )

    def fed(self, prompt: list[int]) -> tuple[int, bool]:
        """(tokens a prefill feeds of `prompt`, whether it reuses the cached prefix)."""
        p = len(self.prefix)
        if p and len(prompt) > p and tuple(prompt[:p]) == self.prefix:
            return len(prompt) - p, True
        return len(prompt), False

    def admit(self, waiting: deque[Request], rows: int, widest: int) -> list[list[Request]]:
        """Pop the requests to prefill now from the head of `waiting`, grouped into calls.

        rows: sequences running; widest: their largest prompt + max_new_tokens (0 if none).
        """
        calls: list[list[Request]] = []
        group: list[Request] = []
        longest = 0  # the current call's longest fed prompt
        cached = False  # whether the current call's prompts reuse the prefix
        spent = 0  # padded tokens of the calls already closed
        while waiting:
            req = waiting[0]
            n, w = rows + 1, max(widest, req.need)
            length, reuses = self.fed(req.prompt)
            if n > self.max_seqs or n * w > self.max_batch_tokens:
                break  # head-of-line waits for room: FIFO, so a long request is never starved
            if group and (
                reuses != cached or (len(group) + 1) * max(longest, length) > self.max_prefill_tokens
            ):
                calls.append(group)
                spent += len(group) * longest
                group, longest = [], 0
            padded = (len(group) + 1) * max(longest, length)
            if (calls or group) and spent + padded > self.prefill_budget:
                break
            group.append(waiting.popleft())
            rows, widest, longest, cached = n, w, max(longest, length), reuses
        if group:
            calls.append(group)
        return calls
