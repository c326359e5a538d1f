"""What a generation request looks like from outside the engine: its types, nothing that runs.

The llm.json config (`LLMConfig`), the one vocabulary of why a generation
stopped (`StopReason`), the events a request streams (`TextPiece`, then one
`Finished`), the handle a submitter iterates and cancels
(`GenerationHandle`), the `stats()` snapshot (`GeneratorStats`), the errors
`submit` raises, and the hand-off of events on the submitter's asyncio loop
(`deliver`), which also cancels a request whose reader has stopped reading.

This module imports nothing of the engine: a handle cancels through the
callback it was given. The engine is worker/llm/engine.py (`Generator`),
grounded text worker/llm/grounded.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from recgen.core.formats import LLM_CONFIG_FILE, LLM_FORMAT

MAX_UNREAD_EVENTS = 64  # text pieces a handle may buffer unread before it is cancelled


class StopReason(StrEnum):
    """Why a generation stopped; worker/service.py maps each to the worker proto's enum."""

    EOS = "eos"  # the model emitted an end-of-sequence token
    LENGTH = "length"  # max_new_tokens reached
    DEADLINE = "deadline"  # the request's deadline passed
    UNGROUNDED = "ungrounded"  # the text named an item outside the prompt (grounded.py only)
    CANCELLED = "cancelled"  # cancelled by the reader, a stalled stream, or stop()
    ERROR = "error"  # the step failed (Finished.error says how)


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
        path = Path(llm_dir) / LLM_CONFIG_FILE
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


@dataclass(frozen=True)
class GeneratorStats:
    """`Generator.stats()`: counters since start, and the recent latency samples."""

    decode_steps: int
    decode_rows: int  # Σ over decode steps of the sequences in the step
    max_rows_per_step: int
    prefill_calls: int
    prefill_rows: int
    prefill_tokens: int  # padded prompt tokens fed by prefills
    prefix_tokens_reused: int  # prompt tokens not fed: the cached prefix's KV was reused
    tokens_generated: int
    requests: int
    finished: dict[str, int]  # StopReason value -> requests that ended so
    queue_depth: int
    running: int
    ttft_s: list[float]  # recent times to first token (from submit)
    token_latency_s: list[float]  # recent gaps between a sequence's tokens

    @property
    def mean_seqs_per_step(self) -> float:
        return self.decode_rows / self.decode_steps if self.decode_steps else 0.0


class GenerationHandle:
    """One request: async-iterate it for events; `cancel()` from any thread.

    The engine fills token_ids (generated ids, eos excluded), prefills (how
    many times the prompt went through a prefill: always 1 once admitted),
    decode_steps (steps this request was in), first_token_at and finished,
    and sets cancel_requested once a cancellation is on its way. Events are
    delivered on `loop`, the submitter's.
    """

    def __init__(
        self,
        request_id: int,
        prompt_tokens: int,
        max_new_tokens: int,
        loop: asyncio.AbstractEventLoop,
        on_cancel: Callable[[GenerationHandle], None],
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.loop = loop
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.token_ids: list[int] = []
        self.prefills = 0
        self.decode_steps = 0
        self.finished: Finished | None = None
        self.cancel_requested = False
        self.slow_reader = False  # cancelled because its reader fell behind
        self._on_cancel = on_cancel  # the engine's: drops the request before its next step
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._ended = False

    def cancel(self) -> None:
        """Stop generating: the request leaves the batch before the next step."""
        self._on_cancel(self)

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
    """Put events in their handles' queues; runs on the handles' loop (call_soon_threadsafe)."""
    for handle, event in items:
        handle._queue.put_nowait(event)
        # A reader that stopped reading (a stalled stream) must not keep a
        # decode slot: past MAX_UNREAD_EVENTS unread pieces the request is
        # cancelled and leaves the batch before the next step.
        if handle._queue.qsize() > MAX_UNREAD_EVENTS and not handle.cancel_requested:
            handle.slow_reader = True
            handle.cancel()
