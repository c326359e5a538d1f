"""The LLM engine: continuous batching over an exported ONNX decoder with KV cache.

One scheduler thread owns the running batch. Each iteration it

1. drops rows that were cancelled or ran past their deadline,
2. admits waiting requests (FIFO, within `max_seqs`, the KV budget
   `max_batch_tokens` and `max_prefill_tokens`) and prefills them together in
   one left-padded forward pass; their first tokens are sampled and streamed
   right away and their KV rows join the running batch (padded on the left
   to a common past length, mask 0),
3. runs one decode step for every running row (one token each) and drops
   the rows that hit an eos token or max_new_tokens.

At most one prefill runs between two decode steps, so a stream of arrivals
cannot stall the running sequences, and a new request waits at most one
decode step (plus its own prefill) before its first token. A row's prompt is
prefilled exactly once; it never waits for the batch to drain.

Text is streamed per request as `TextPiece` events and one final `Finished`
event (reason eos | length | deadline | cancelled | error), delivered to the
submitter's asyncio loop with `call_soon_threadsafe`. Greedy by default;
temperature / top-p sampling with a per-request seeded numpy generator.

This module does not build prompts and does not check grounding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from worker.detok import IncrementalDecoder
from worker.kv_cache import KVCache, concat, left_pad, position_ids
from worker.llm_stream import (
    LLM_FORMAT,
    MAX_UNREAD_EVENTS,
    Event,
    Finished,
    GenerationHandle,
    GeneratorClosed,
    LLMConfig,
    QueueFull,
    StopReason,
    TextPiece,
)
from worker.llm_stream import deliver as _deliver

# The engine's public types live in worker/llm_stream.py; importing them from
# here keeps working.
__all__ = [
    "LLM_FORMAT",
    "MAX_UNREAD_EVENTS",
    "Event",
    "Finished",
    "GenerationHandle",
    "Generator",
    "GeneratorClosed",
    "LLMConfig",
    "QueueFull",
    "StopReason",
    "TextPiece",
    "GeneratorStats",
]

LOG = logging.getLogger(__name__)

_RECENT = 4096  # latency samples and step records kept for stats


@dataclass(eq=False)
class _Request:
    handle: GenerationHandle
    prompt: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    rng: np.random.Generator
    deadline: float  # monotonic; inf when none
    detok: IncrementalDecoder

    @property
    def need(self) -> int:  # KV slots this sequence may grow to
        return len(self.prompt) + self.max_new_tokens


@dataclass
class _Batch:
    """Running rows: requests, their KV cache and per-row state, aligned on B."""

    reqs: list[_Request]
    kv: KVCache
    next_tokens: np.ndarray  # (B,) int64 sampled, not yet fed
    positions: np.ndarray  # (B,) int64 position id of next_tokens
    generated: np.ndarray  # (B,) int64 tokens sampled so far (eos included)
    max_new: np.ndarray  # (B,) int64
    need: np.ndarray  # (B,) int64 prompt + max_new
    deadlines: np.ndarray  # (B,) float64 monotonic
    ids: np.ndarray  # (B,) int64 request ids
    temperature: np.ndarray  # (B,) float64; 0 = greedy
    top_p: np.ndarray  # (B,) float64
    submitted_at: np.ndarray  # (B,) float64
    last_at: np.ndarray  # (B,) float64 time of the last token
    steps: np.ndarray  # (B,) int64 decode steps taken

    @property
    def size(self) -> int:
        return len(self.reqs)

    def select(self, rows: np.ndarray) -> _Batch:
        return _Batch(
            reqs=[self.reqs[i] for i in rows.tolist()],
            kv=self.kv.select(rows),
            **{n: getattr(self, n)[rows] for n in _ROW_FIELDS},
        )

    @staticmethod
    def join(a: _Batch | None, b: _Batch | None) -> _Batch | None:
        if a is None or b is None:
            return a or b
        return _Batch(
            reqs=a.reqs + b.reqs,
            kv=concat([a.kv, b.kv]),
            **{n: np.concatenate([getattr(a, n), getattr(b, n)]) for n in _ROW_FIELDS},
        )


_ROW_FIELDS = [f.name for f in fields(_Batch) if f.name not in ("reqs", "kv")]


class _Recent:
    """The last `capacity` float samples (a ring buffer)."""

    def __init__(self, capacity: int = _RECENT) -> None:
        self._buf = np.zeros(capacity, dtype=np.float64)
        self._n = 0

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()[-len(self._buf) :]
        idx = (self._n + np.arange(len(values))) % len(self._buf)
        self._buf[idx] = values
        self._n += len(values)

    def values(self) -> list[float]:
        if self._n <= len(self._buf):
            return self._buf[: self._n].tolist()
        cut = self._n % len(self._buf)
        return np.concatenate([self._buf[cut:], self._buf[:cut]]).tolist()


@dataclass(frozen=True)
class GeneratorStats:
    decode_steps: int
    decode_rows: int  # Σ over decode steps of the sequences in the step
    max_rows_per_step: int
    prefill_calls: int
    prefill_rows: int
    prefill_tokens: int  # padded prompt tokens fed by prefills
    tokens_generated: int
    requests: int
    finished: dict[str, int]
    queue_depth: int
    running: int
    ttft_s: list[float]  # recent times to first token (from submit)
    token_latency_s: list[float]  # recent gaps between a sequence's tokens

    @property
    def mean_seqs_per_step(self) -> float:
        return self.decode_rows / self.decode_steps if self.decode_steps else 0.0


def make_session(
    model: Path, *, threads: int, providers: Sequence[str], allow_spinning: bool = True
) -> ort.InferenceSession:
    """An ORT session with explicit providers and thread counts."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if not allow_spinning:  # idle threads sleep instead of burning a core between steps
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(model), opts, providers=list(providers))


class Generator:
    """Continuous-batching text generation on one ONNX Runtime session.

    llm_dir: model.onnx, tokenizer.json, llm.json (export/llm.py). threads:
    ORT intra-op threads. max_seqs: rows in the running batch. max_batch_tokens:
    KV budget, rows × the longest (prompt + max_new_tokens) among them.
    max_prefill_tokens: padded prompt tokens per prefill call (a single longer
    prompt is still prefilled alone). max_queue: waiting requests before
    `submit` raises QueueFull.
    """

    def __init__(
        self,
        llm_dir: Path,
        *,
        threads: int,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        max_seqs: int = 32,
        max_batch_tokens: int = 4096,
        max_prefill_tokens: int = 512,
        max_queue: int = 256,
        allow_spinning: bool = True,
    ) -> None:
        assert threads >= 1 and max_seqs >= 1 and max_queue >= 0, (threads, max_seqs, max_queue)
        llm_dir = Path(llm_dir)
        self.config = LLMConfig.load(llm_dir)
        self.tokenizer = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
        self.session = make_session(
            llm_dir / "model.onnx", threads=threads, providers=providers, allow_spinning=allow_spinning
        )
        self.max_seqs = max_seqs
        self.max_batch_tokens = max_batch_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.max_queue = max_queue
        self._bind_graph()

        self._cv = threading.Condition(threading.Lock())  # guards _waiting, _cancels
        self._waiting: deque[_Request] = deque()
        self._cancels: set[int] = set()  # request ids to drop before the next step
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._next_id = 0
        # Scheduler-thread state.
        self._batch: _Batch | None = None
        self._outbox: list[tuple[GenerationHandle, Event]] = []
        # Stats: written by the scheduler thread only; read without stopping it.
        self._n = dict(
            decode_steps=0,
            decode_rows=0,
            max_rows_per_step=0,
            prefill_calls=0,
            prefill_rows=0,
            prefill_tokens=0,
            tokens_generated=0,
            requests=0,
        )
        self._finished_by: dict[str, int] = {}  # guarded by _stats_lock (two threads finish)
        self._stats_lock = threading.Lock()
        self._ttft = _Recent()
        self._token_latency = _Recent()
        self._steps: deque[tuple[int, ...]] = deque(maxlen=_RECENT)

    def _bind_graph(self) -> None:
        """Check the graph's inputs / outputs once; fix the past and present names."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self._past_names = [n for n in inputs if n.startswith("past_key_values.")]
        unknown = set(inputs) - {"input_ids", "attention_mask", "position_ids", *self._past_names}
        if unknown or "input_ids" not in inputs or "attention_mask" not in inputs:
            raise ValueError(
                f"LLM graph inputs {sorted(inputs)}: expected input_ids, "
                f"attention_mask, [position_ids], past_key_values.*"
            )
        if len(self._past_names) != 2 * self.config.num_layers:
            raise ValueError(
                f"graph has {len(self._past_names)} past inputs, llm.json says "
                f"{self.config.num_layers} layers"
            )
        self._present_names = [n.replace("past_key_values.", "present.") for n in self._past_names]
        missing = [n for n in ["logits", *self._present_names] if n not in outputs]
        if missing:
            raise ValueError(f"LLM graph lacks outputs {missing}")
        self._output_names = ["logits", *self._present_names]
        self._has_positions = "position_ids" in inputs
        kv_type = inputs[self._past_names[0]].type
        self._kv_dtype = np.float16 if kv_type == "tensor(float16)" else np.float32
        self._eos = np.array(self.config.eos_token_ids, dtype=np.int64)

    # -- public API -----------------------------------------------------------

    def start(self) -> None:
        with self._cv:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="llm-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Finish every request ("cancelled") and join the scheduler."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._thread = None

    def __enter__(self) -> Generator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def encode(self, prompt: str) -> list[int]:
        """Prompt text -> ids; the prompt already holds any BOS (llm.json's prefix)."""
        return self.tokenizer.encode(prompt, add_special_tokens=False).ids

    def submit(
        self,
        prompt: str,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        deadline: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> GenerationHandle:
        """Queue a request; events go to `loop` (default: the running loop).

        deadline: time.monotonic() value after which the request stops
        ("deadline"). Raises QueueFull, GeneratorClosed, or ValueError for a
        request that could never run (empty, or over max_batch_tokens).
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("empty prompt")
        limit = min(self.max_batch_tokens, self.config.max_positions or self.max_batch_tokens)
        if len(ids) + max_new_tokens > limit:
            raise ValueError(
                f"{len(ids)} prompt tokens + {max_new_tokens} new tokens exceed "
                f"the limit of {limit} (max_batch_tokens={self.max_batch_tokens}, "
                f"model context={self.config.max_positions})"
            )
        loop = loop or asyncio.get_running_loop()
        with self._cv:
            if self._thread is None or self._stopping:
                raise GeneratorClosed("generator is not running")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests already waiting")
            handle = GenerationHandle(self, self._next_id, len(ids), max_new_tokens, loop)
            self._next_id += 1
            self._waiting.append(
                _Request(
                    handle,
                    ids,
                    max_new_tokens,
                    float(temperature),
                    float(top_p),
                    np.random.default_rng(seed),
                    float("inf") if deadline is None else deadline,
                    IncrementalDecoder(self.tokenizer),
                )
            )
            handle.token_ids = self._waiting[-1].detok.ids  # live view, eos never pushed
            self._n["requests"] += 1
            self._cv.notify()
        return handle

    def room_for(self, prompt: str) -> int:
        """New tokens that fit after this prompt (context and KV budget)."""
        limit = min(self.max_batch_tokens, self.config.max_positions or self.max_batch_tokens)
        return limit - len(self.encode(prompt))

    def stats(self) -> GeneratorStats:
        with self._cv:
            return GeneratorStats(
                **self._n,
                finished=self._finished_counts(),
                queue_depth=len(self._waiting),
                running=self._batch.size if self._batch is not None else 0,
                ttft_s=self._ttft.values(),
                token_latency_s=self._token_latency.values(),
            )

    def _finished_counts(self) -> dict[str, int]:
        with self._stats_lock:
            return dict(self._finished_by)

    def recent_steps(self) -> list[tuple[int, ...]]:
        """Request ids in each recent decode step, oldest first."""
        with self._cv:
            return list(self._steps)

    def generate_alone(self, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        """The unbatched greedy reference: one sequence, no padding, plain loop."""
        ids = self.encode(prompt)
        feed: dict[str, np.ndarray] = {
            "input_ids": np.array([ids], dtype=np.int64),
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        }
        if self._has_positions:
            feed["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
        for name in self._past_names:
            feed[name] = np.zeros(
                (1, self.config.num_kv_heads, 0, self.config.head_dim), dtype=self._kv_dtype
            )
        eos = set(self.config.eos_token_ids)
        out: list[int] = []
        while len(out) < max_new_tokens:
            logits, *present = self.session.run(self._output_names, feed)
            token = int(logits[0, -1].argmax())
            if token in eos:
                break
            out.append(token)
            total = len(ids) + len(out)
            feed = {
                "input_ids": np.array([[token]], dtype=np.int64),
                "attention_mask": np.ones((1, total), dtype=np.int64),
                **dict(zip(self._past_names, present, strict=True)),
            }
            if self._has_positions:
                feed["position_ids"] = np.array([[total - 1]], dtype=np.int64)
        # As the stream does: an incomplete final character is not text.
        return out, self.tokenizer.decode(out, skip_special_tokens=True).rstrip("\ufffd")

    # -- cancellation (any thread) ----------------------------------------------

    def _cancel(self, handle: GenerationHandle) -> None:
        with self._cv:
            if handle.finished is not None or handle._cancel_requested:
                return
            handle._cancel_requested = True
            for req in self._waiting:
                if req.handle is handle:  # never started: finish it here
                    self._waiting.remove(req)
                    events: list[tuple[GenerationHandle, Event]] = []
                    self._finish(req, "cancelled", outbox=events)
                    with contextlib.suppress(RuntimeError):  # the submitter's loop is closed
                        handle._loop.call_soon_threadsafe(_deliver, events)
                    return
            self._cancels.add(handle.request_id)
            self._cv.notify()

    # -- scheduler thread ------------------------------------------------------

    def _run(self) -> None:
        LOG.info(
            "llm scheduler started (max_seqs=%d, max_batch_tokens=%d)", self.max_seqs, self.max_batch_tokens
        )
        while True:
            with self._cv:
                while not (self._stopping or self._waiting or self._cancels or self._batch is not None):
                    self._cv.wait()
                if self._stopping:
                    break
                cancels, self._cancels = self._cancels, set()
                group = self._admit(time.monotonic())
            try:
                self._retire(cancels, time.monotonic())
                if group:
                    self._prefill(group)
                    group = []
                    self._flush()
                if self._batch is not None:
                    self._decode()
            except Exception as exc:  # a bug or a broken model: fail loudly, keep serving
                LOG.exception(
                    "llm step failed; failing %d running requests",
                    (self._batch.size if self._batch else 0) + len(group),
                )
                for req in (self._batch.reqs if self._batch else []) + group:
                    self._finish(req, "error", error=f"{type(exc).__name__}: {exc}")
                self._batch = None
            self._flush()
        with self._cv:
            for req in (self._batch.reqs if self._batch else []) + list(self._waiting):
                self._finish(req, "cancelled")
            self._batch = None
            self._waiting.clear()
            self._flush_locked()
        LOG.info("llm scheduler stopped")

    def _admit(self, now: float) -> list[_Request]:
        """Pop the waiting requests to prefill now (FIFO, within budgets). Holds _cv."""
        if not self._waiting:
            return []
        if any(r.deadline <= now for r in self._waiting):
            for r in [r for r in self._waiting if r.deadline <= now]:
                self._waiting.remove(r)
                self._finish(r, "deadline")
        b = self._batch
        rows = b.size if b is not None else 0
        widest = int(b.need.max()) if b is not None else 0
        group: list[_Request] = []
        longest = 0
        while self._waiting:
            req = self._waiting[0]
            n, w = rows + len(group) + 1, max(widest, req.need)
            padded = (len(group) + 1) * max(longest, len(req.prompt))
            if (
                n > self.max_seqs
                or n * w > self.max_batch_tokens
                or (group and padded > self.max_prefill_tokens)
            ):
                break  # head-of-line waits: FIFO, so a long request is never starved
            group.append(self._waiting.popleft())
            widest, longest = w, max(longest, len(req.prompt))
        return group

    def _retire(self, cancels: set[int], now: float) -> None:
        """Drop cancelled and expired rows before they cost another step."""
        b = self._batch
        if b is None:
            return
        gone = b.deadlines <= now
        cancelled = np.zeros_like(gone)
        if cancels:
            cancelled = np.isin(b.ids, np.fromiter(cancels, dtype=np.int64, count=len(cancels)))
            gone |= cancelled
        if not gone.any():
            return
        for row in np.flatnonzero(gone).tolist():
            self._finish(b.reqs[row], "cancelled" if cancelled[row] else "deadline", steps=int(b.steps[row]))
        keep = np.flatnonzero(~gone)
        self._batch = b.select(keep) if keep.size else None

    def _prefill(self, group: list[_Request]) -> None:
        ids, mask = left_pad([r.prompt for r in group], self.config.pad_token_id)  # (n, L)
        n = len(group)
        feed: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        if self._has_positions:
            feed["position_ids"] = position_ids(mask)
        empty = KVCache.empty(
            len(self._past_names), n, self.config.num_kv_heads, self.config.head_dim, self._kv_dtype
        )
        feed.update(zip(self._past_names, empty.past, strict=True))
        logits, *present = self.session.run(self._output_names, feed)
        now = time.monotonic()
        for r in group:
            r.handle.prefills += 1
        lengths = mask.sum(axis=1)
        sub = _Batch(
            reqs=group,
            kv=KVCache(present, mask),
            next_tokens=np.zeros(n, dtype=np.int64),
            positions=lengths.astype(np.int64),
            generated=np.zeros(n, dtype=np.int64),
            max_new=np.array([r.max_new_tokens for r in group], dtype=np.int64),
            need=np.array([r.need for r in group], dtype=np.int64),
            deadlines=np.array([r.deadline for r in group], dtype=np.float64),
            ids=np.array([r.handle.request_id for r in group], dtype=np.int64),
            temperature=np.array([r.temperature for r in group], dtype=np.float64),
            top_p=np.array([r.top_p for r in group], dtype=np.float64),
            submitted_at=np.array([r.handle.submitted_at for r in group], dtype=np.float64),
            last_at=np.full(n, now),
            steps=np.zeros(n, dtype=np.int64),
        )
        self._n["prefill_calls"] += 1
        self._n["prefill_rows"] += n
        self._n["prefill_tokens"] += int(ids.size)
        # Left padding puts every row's last prompt token in the last column.
        tokens = self._choose(logits[:, -1, :], sub)  # (n,)
        self._batch = _Batch.join(self._batch, self._accept(sub, tokens, now))

    def _decode(self) -> None:
        b = self._batch
        assert b is not None
        mask = b.kv.step_mask()  # (B, T + 1)
        feed: dict[str, np.ndarray] = {"input_ids": b.next_tokens[:, None], "attention_mask": mask}
        if self._has_positions:
            feed["position_ids"] = b.positions[:, None]
        feed.update(zip(self._past_names, b.kv.past, strict=True))
        logits, *present = self.session.run(self._output_names, feed)  # (B, 1, V)
        now = time.monotonic()
        b.kv = KVCache(present, mask)  # (B, heads, T + 1, hd) each
        b.positions += 1
        b.steps += 1
        self._n["decode_steps"] += 1
        self._n["decode_rows"] += b.size
        self._n["max_rows_per_step"] = max(self._n["max_rows_per_step"], b.size)
        self._steps.append(tuple(b.ids.tolist()))
        self._batch = self._accept(b, self._choose(logits[:, -1, :], b), now)

    def _choose(self, logits: np.ndarray, b: _Batch) -> np.ndarray:
        """(B, V) logits -> (B,) next tokens: argmax, or sampled for rows with temperature."""
        tokens = logits.argmax(axis=-1).astype(np.int64)
        rows = np.flatnonzero(b.temperature > 0)
        if rows.size:
            tokens[rows] = _sample(
                logits[rows], b.temperature[rows], b.top_p[rows], [b.reqs[i].rng for i in rows.tolist()]
            )
        return tokens

    def _accept(self, b: _Batch, tokens: np.ndarray, now: float) -> _Batch | None:
        """Record one new token per row; stream text; drop rows that are done."""
        b.generated += 1
        eos = (tokens[:, None] == self._eos[None, :]).any(axis=1)  # (B,)
        done = eos | (b.generated >= b.max_new)
        first = b.generated == 1
        gaps = now - b.last_at
        b.last_at[:] = now
        self._n["tokens_generated"] += int(b.size - eos.sum())
        if first.any():
            self._ttft.add(now - b.submitted_at[first])
        if not first.all():
            self._token_latency.add(gaps[~first])
        # Per sequence: detokenization is inherently one sequence at a time.
        for row, (req, token) in enumerate(zip(b.reqs, tokens.tolist(), strict=True)):
            if first[row]:
                req.handle.first_token_at = now
            if not eos[row]:
                piece = req.detok.push(token)
                if piece:
                    self._outbox.append((req.handle, TextPiece(piece)))
            if done[row]:
                self._finish(req, "eos" if eos[row] else "length", steps=int(b.steps[row]))
        b.next_tokens = tokens
        if not done.any():
            return b
        keep = np.flatnonzero(~done)
        return b.select(keep) if keep.size else None

    def _finish(
        self,
        req: _Request,
        reason: StopReason,
        *,
        steps: int | None = None,
        error: str | None = None,
        outbox: list[tuple[GenerationHandle, Event]] | None = None,
    ) -> None:
        """Final events for `req` (into the scheduler's outbox unless one is given)."""
        outbox = self._outbox if outbox is None else outbox
        handle = req.handle
        if handle.finished is not None:
            return
        if steps is not None:
            handle.decode_steps = steps
        if reason != "cancelled":
            rest = req.detok.flush()
            if rest:
                outbox.append((handle, TextPiece(rest)))
        handle.finished = Finished(reason, len(req.detok.ids), error)
        outbox.append((handle, handle.finished))
        with self._stats_lock:
            self._finished_by[reason] = self._finished_by.get(reason, 0) + 1

    def _flush(self) -> None:
        with self._cv:
            self._flush_locked()

    def _flush_locked(self) -> None:
        """Deliver queued events: one call_soon_threadsafe per loop."""
        if not self._outbox:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationHandle, Event]]] = {}
        for handle, event in self._outbox:
            by_loop.setdefault(handle._loop, []).append((handle, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the submitter's loop is closed: nobody is listening
                for handle, _ in items:
                    if handle.finished is None:
                        handle._cancel_requested = True
                        self._cancels.add(handle.request_id)


def _sample(
    logits: np.ndarray, temperature: np.ndarray, top_p: np.ndarray, rngs: list[np.random.Generator]
) -> np.ndarray:
    """(n, V) logits -> (n,) tokens drawn with temperature and nucleus (top-p) filtering."""
    z = logits.astype(np.float64) / temperature[:, None]
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)  # (n, V)
    u = np.array([rng.random() for rng in rngs])  # one draw per row: reproducible per seed
    if np.all(top_p >= 1.0):
        cdf = np.cumsum(p, axis=1)
        return np.minimum((cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1), p.shape[1] - 1)
    order = np.argsort(-p, axis=1, kind="stable")  # (n, V) most likely first
    ps = np.take_along_axis(p, order, axis=1)
    keep = (np.cumsum(ps, axis=1) - ps) < top_p[:, None]  # the most likely always stays
    cdf = np.cumsum(np.where(keep, ps, 0.0), axis=1)
    idx = np.minimum((cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1), p.shape[1] - 1)
    return order[np.arange(len(order)), idx]
