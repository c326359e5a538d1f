"""What a generation request looks like from outside the engine.

The llm.json config (`LLMConfig`), the events a request streams (`TextPiece`,
then one `Finished`), the handle a submitter iterates and cancels
(`GenerationHandle`), and the thread-safe hand-off of events to the
submitter's asyncio loop (`deliver`), which also cancels a request whose
reader has stopped reading. The engine itself is worker/llm/engine.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from recgen.core.formats import LLM_FORMAT

if TYPE_CHECKING:
    from worker.llm.engine import Generator

MAX_UNREAD_EVENTS = 64  # text pieces a handle may buffer unread before it is cancelled

StopReason = Literal["eos", "length", "deadline", "cancelled", "error"]


class QueueFull(Exception):
    """The generator's waiting queue is full: shed load (RESOURCE_EXHAUSTED)."""


class GeneratorClosed(RuntimeError):
    """submit() on a generator that is not running."""


@dataclass(frozen=True)
class LLMConfig:
    """llm.json, as written by export/llm/onnx_export.py."""

    architecture: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    prompt_prefix: str
    prompt_suffix: str
    precision: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    max_positions: int | None = None  # context length, when llm.json states it
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @staticmethod
    def load(llm_dir: Path) -> LLMConfig:
        path = Path(llm_dir) / "llm.json"
        meta = json.loads(path.read_text())
        if meta.get("format") != LLM_FORMAT:
            raise ValueError(f"{path}: llm format {meta.get('format')!r}, expected {LLM_FORMAT}")
        if not meta.get("eos_token_ids"):
            raise ValueError(f"{path}: no eos_token_ids; generation could never stop on its own")
        return LLMConfig(
            architecture=meta["architecture"],
            num_layers=int(meta["num_layers"]),
            num_kv_heads=int(meta["num_kv_heads"]),
            head_dim=int(meta["head_dim"]),
            vocab_size=int(meta["vocab_size"]),
            eos_token_ids=tuple(int(i) for i in meta["eos_token_ids"]),
            pad_token_id=int(meta["pad_token_id"]),
            prompt_prefix=meta["prompt_prefix"],
            prompt_suffix=meta["prompt_suffix"],
            precision=meta["precision"],
            input_names=tuple(meta["input_names"]),
            output_names=tuple(meta["output_names"]),
            max_positions=_optional_int(meta.get("max_position_embeddings", meta.get("max_positions"))),
            raw=meta,
        )


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class TextPiece:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: StopReason
    tokens: int  # tokens generated, eos not counted
    error: str | None = None


Event = TextPiece | Finished


class GenerationHandle:
    """One request: async-iterate it for events; `cancel()` from any thread.

    The scheduler fills token_ids (generated ids, eos excluded), prefills (how
    many times the prompt went through a prefill: always 1 once admitted),
    decode_steps (steps this request was in), first_token_at and finished.
    """

    def __init__(
        self,
        generator: Generator,
        request_id: int,
        prompt_tokens: int,
        max_new_tokens: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.token_ids: list[int] = []
        self.prefills = 0
        self.decode_steps = 0
        self.finished: Finished | None = None
        self._generator = generator
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._ended = False
        self._cancel_requested = False
        self.slow_reader = False  # cancelled because its reader fell behind

    def cancel(self) -> None:
        """Stop generating: the request leaves the batch before the next step."""
        self._generator._cancel(self)

    def __aiter__(self) -> GenerationHandle:
        return self

    async def __anext__(self) -> Event:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if isinstance(event, Finished):
            self._ended = True
        return event

    async def result(self) -> tuple[str, Finished]:
        """Consume the stream: (full text, final event)."""
        pieces: list[str] = []
        async for event in self:
            if isinstance(event, TextPiece):
                pieces.append(event.text)
            else:
                return "".join(pieces), event
        assert self.finished is not None, "stream ended twice"
        return "".join(pieces), self.finished


def deliver(items: Iterable[tuple[GenerationHandle, Event]]) -> None:
    for handle, event in items:
        handle._queue.put_nowait(event)
        # A reader that stopped reading (a stalled stream) must not keep a
        # decode slot: past MAX_UNREAD_EVENTS unread pieces the request is
        # cancelled and leaves the batch before the next step.
        if handle._queue.qsize() > MAX_UNREAD_EVENTS and not handle._cancel_requested:
            handle.slow_reader = True
            handle.cancel()
