"""Grounded text generation: the LLM's stream, released only as far as it is grounded.

`generate_grounded` submits a prompt to the `Generator` and yields the text
that is safe to show. Two lines of defence: by default every token is chosen
under a `TitleConstraint` (worker/llm/constraint.py), so the text cannot name
an item outside `allowed` (grounded by construction); and every piece passes
through a `StreamGuard`, the after-the-fact check, which stays on. The first
mention of an item outside `allowed` cancels the generation at once (the
sequence leaves the batch before the next decode step) and ends the stream
with `StopReason.UNGROUNDED`; nothing after the last clean boundary before
that mention is ever yielded.

This module builds no prompts and picks no items: the caller says what is
allowed (the items shown in the prompt).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

from recgen.core.grounding import GroundingChecker, Mention, StreamGuard
from worker.llm.api import Finished, StopReason, TextPiece
from worker.llm.constraint import TitleConstraint
from worker.llm.engine import Generator

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SafeText:
    """Text that passed the grounding check, in stream order."""

    text: str


@dataclass(frozen=True)
class TextDone:
    """The last event. text: everything shown (all SafeText pieces joined)."""

    stop_reason: StopReason
    reason: str
    text: str
    tokens: int
    violation: Mention | None = None


TextEvent = SafeText | TextDone

_REASONS = {
    StopReason.EOS: "the model ended its text",
    StopReason.LENGTH: "max_new_tokens reached",
    StopReason.DEADLINE: "the deadline passed",
    StopReason.CANCELLED: "cancelled",
}


async def generate_grounded(
    generator: Generator,
    checker: GroundingChecker,
    prompt: str,
    allowed: Collection[int],
    *,
    primer: str = "",
    constrained: bool = True,
    check: bool = True,
    **gen_kwargs: Any,
) -> AsyncIterator[TextEvent]:
    """Yield SafeText pieces, then one TextDone. gen_kwargs go to `Generator.submit`.

    primer: the answer's first words, already at the end of `prompt`; shown as
    the start of the text and checked like the rest of it. constrained: decode
    under a TitleConstraint for `allowed`. check: run the StreamGuard (False
    passes the text through unchecked: for tests of the constraint alone).
    Raises what submit raises (QueueFull, ValueError, GeneratorClosed) before
    the first event. If the consumer stops early, the generation is cancelled.
    """
    guard: StreamGuard | _Unchecked = StreamGuard(checker, allowed) if check else _Unchecked()
    if constrained:
        gen_kwargs["constraint"] = TitleConstraint(checker, generator.vocab, allowed, primer)
    handle = generator.submit(prompt, **gen_kwargs)
    if primer:
        safe = guard.feed(primer)
        if safe:
            yield SafeText(safe)
    try:
        async for event in handle:
            if isinstance(event, TextPiece):
                safe = guard.feed(event.text)
                if guard.violation is not None:
                    handle.cancel()  # stop decoding before doing anything else
                if safe:
                    yield SafeText(safe)
                if guard.violation is not None:
                    yield _ungrounded(guard, len(handle.token_ids))
                    return
            else:
                assert isinstance(event, Finished)
                rest = guard.finish()
                if rest:
                    yield SafeText(rest)
                if guard.violation is not None:
                    yield _ungrounded(guard, event.tokens)
                    return
                reason = event.error if event.reason == StopReason.ERROR else _REASONS[event.reason]
                if handle.slow_reader:
                    reason = "the reader fell behind the text; generation stopped"
                yield TextDone(event.reason, reason or "error", guard.released_text, event.tokens)
                return
    finally:
        if handle.finished is None:
            handle.cancel()


class _Unchecked:
    """StreamGuard's interface, releasing everything (check=False)."""

    violation: Mention | None = None

    def __init__(self) -> None:
        self.released_text = ""

    def feed(self, piece: str) -> str:
        self.released_text += piece
        return piece

    def finish(self) -> str:
        return ""


def _ungrounded(guard: StreamGuard | _Unchecked, tokens: int) -> TextDone:
    bad = guard.violation
    assert bad is not None
    LOG.info("ungrounded text stopped: %r names item %d, not in the prompt", bad.matched, bad.item_index)
    return TextDone(
        StopReason.UNGROUNDED,
        f"the text names {bad.matched!r} (item {bad.item_index}), which was not in the prompt",
        guard.released_text,
        tokens,
        bad,
    )
