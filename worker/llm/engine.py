"""`Generator`: continuous batching over an exported ONNX decoder, run by one scheduler thread.

The scheduler thread owns the running batch. Each iteration it

1. drops rows that were cancelled or ran past their deadline, and waiting
   requests past their deadline (retirement: a request nobody waits for
   costs no further prefill or decode step),
2. admits waiting requests (worker/llm/schedule.py: FIFO, bounded by
   sequences and KV tokens, up to a prefill token budget in calls of bounded
   size) and prefills them call by call; each call's first tokens are sampled
   and streamed right away and its KV rows join the running batch (padded on
   the left to a common past length, mask 0),
3. runs one decode step for every running row (one token each) and drops
   the rows that hit an eos token or max_new_tokens.

A row's prompt is prefilled exactly once; it never waits for the batch to
drain. Events (`TextPiece`, then one `Finished` with a `StopReason`) are
gathered in an `Outbox` (worker/llm/outbox.py) during a step and delivered to each submitter's
asyncio loop with one `call_soon_threadsafe` after every prefill call and
decode step. `StatsRecorder` (worker/llm/stats.py) keeps the counters behind `stats()`. Greedy by
default; temperature / top-p sampling with a per-request seeded generator.

The forward passes are worker/llm/session.py, the per-row arrays and KV cache
worker/llm/batch.py, token choice and detokenization worker/llm/decoding.py
(under a request's grounding constraint: worker/llm/constraint.py), the public
types worker/llm/api.py. This module does not build prompts and does not check
grounding (worker/llm/grounded.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from recgen.config import WorkerConfig
from recgen.core.formats import LLM_MODEL_FILE, LLM_TOKENIZER_FILE
from worker.llm.api import (
    GenerationHandle,
    GeneratorClosed,
    GeneratorStats,
    LLMConfig,
    QueueFull,
    StopReason,
    deliver,
)
from worker.llm.batch import Request, RunningBatch
from worker.llm.constraint import TitleConstraint, TitleVocabulary, choose_constrained
from worker.llm.decoding import IncrementalDecoder, choose
from worker.llm.outbox import Items, Outbox
from worker.llm.schedule import PrefillPolicy
from worker.llm.session import DecoderSession, make_session
from worker.llm.stats import StatsRecorder

LOG = logging.getLogger(__name__)


class Generator:
    """Continuous-batching text generation on one ONNX Runtime session.

    llm_dir: model.onnx, tokenizer.json, llm.json (export/llm/onnx_export.py). threads:
    ORT intra-op threads. max_seqs: rows in the running batch. max_batch_tokens:
    KV budget, rows × the longest (prompt + max_new_tokens) among them.
    max_prefill_tokens: padded prompt tokens per prefill call (a single longer
    prompt is still prefilled alone). prefill_budget: padded prompt tokens
    prefilled between two decode steps, in several calls when larger than
    max_prefill_tokens (default: equal, one call per decode step; why in
    worker/llm/schedule.py). max_queue: waiting requests before
    `submit` raises QueueFull. last_logits: feed the graph's `logits_to_keep`
    input when llm.json names one (False: every position's logits, as graphs
    exported before it). cache_prefix: compute llm.json's prompt prefix once
    and prefill only what follows it (default: for fp32 models only, where it
    gives the same tokens; the worker turns it on for int8 too, worker/model.py).
    prefix_text: the text whose KV is cached (default: llm.json's prompt prefix).
    io_binding: keep the KV cache on the session's
    device between steps (worker/llm/session.py; None: the default, on;
    `self.model.io_binding` says which path runs).
    """

    def __init__(
        self,
        llm_dir: Path,
        *,
        threads: int,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        max_seqs: int = WorkerConfig.max_seqs,
        max_batch_tokens: int = 4096,
        max_prefill_tokens: int = 512,
        prefill_budget: int | None = None,
        max_queue: int = WorkerConfig.max_queue,
        allow_spinning: bool = True,
        last_logits: bool = True,
        cache_prefix: bool | None = None,
        prefix_text: str | None = None,
        io_binding: bool | None = None,
    ) -> None:
        assert threads >= 1 and max_seqs >= 1 and max_queue >= 0, (threads, max_seqs, max_queue)
        llm_dir = Path(llm_dir)
        self.config = LLMConfig.load(llm_dir)
        self.tokenizer = Tokenizer.from_file(str(llm_dir / LLM_TOKENIZER_FILE))
        self.session = make_session(
            llm_dir / LLM_MODEL_FILE, threads=threads, providers=providers, allow_spinning=allow_spinning
        )
        self.model = DecoderSession(self.session, self.config, last_logits=last_logits, io_binding=io_binding)
        # Exact only without dynamic quantization: int8 MatMuls scale each call's
        # activations by their range, and the prefix's tokens (attention sinks
        # with outliers) change that range, so the first token can differ from
        # the unbatched reference's (2 of 8 server-shaped prompts on SmolLM2 int8).
        # prefix_text: the text whose KV is cached, when caching (default: llm.json's prompt
        # prefix, the system turn); a longer one every served prompt starts with (the outline's
        # shared head, worker/model.py) saves more prefill. Prompts that do not start with its
        # tokens are prefilled whole, as without a cache.
        if self.config.precision == "fp32" if cache_prefix is None else cache_prefix:
            text = self.config.prompt_prefix if prefix_text is None else prefix_text
            self.model.cache_prefix(self.encode(text))
        self.policy = PrefillPolicy(
            max_seqs=max_seqs,
            max_batch_tokens=max_batch_tokens,
            max_prefill_tokens=max_prefill_tokens,
            prefill_budget=max_prefill_tokens if prefill_budget is None else prefill_budget,
            prefix=self.model.prefix,  # budgets count the tokens fed, after the cached prefix
        )
        self.max_seqs = max_seqs
        self.max_batch_tokens = max_batch_tokens
        self.max_prefill_tokens = max_prefill_tokens
        self.max_queue = max_queue
        self._eos = np.array(self.config.eos_token_ids, dtype=np.int64)
        self.vocab = TitleVocabulary(self.tokenizer)  # token texts, for TitleConstraint

        self._cv = threading.Condition(threading.Lock())  # guards _waiting, _cancels
        self._waiting: deque[Request] = deque()
        self._cancels: set[int] = set()  # request ids to drop before the next step
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._next_id = 0
        # Scheduler-thread state.
        self._batch: RunningBatch | None = None
        self._outbox = Outbox()  # events of this step; its counts are read by stats()
        # Stats: written by the scheduler thread only; read without stopping it.
        self._recorder = StatsRecorder()

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
        constraint: TitleConstraint | None = None,
    ) -> GenerationHandle:
        """Queue a request; events go to `loop` (default: the running loop).

        constraint: every token is chosen under it (worker/llm/constraint.py).

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
            handle = GenerationHandle(self._next_id, len(ids), max_new_tokens, loop, self._cancel)
            self._next_id += 1
            self._waiting.append(
                Request(
                    handle,
                    ids,
                    max_new_tokens,
                    float(temperature),
                    float(top_p),
                    np.random.default_rng(seed),
                    float("inf") if deadline is None else deadline,
                    IncrementalDecoder(self.tokenizer),
                    constraint,
                )
            )
            handle.token_ids = self._waiting[-1].detok.ids  # live view, eos never pushed
            self._recorder.submitted()
            self._cv.notify()
        return handle

    def room_for(self, prompt: str) -> int:
        """New tokens that fit after this prompt (context and KV budget)."""
        limit = min(self.max_batch_tokens, self.config.max_positions or self.max_batch_tokens)
        return limit - len(self.encode(prompt))

    def stats(self) -> GeneratorStats:
        with self._cv:
            return self._recorder.snapshot(
                finished=self._outbox.finished_counts(),
                queue_depth=len(self._waiting),
                running=self._batch.size if self._batch is not None else 0,
            )

    def recent_steps(self) -> list[tuple[int, ...]]:
        """Request ids in each recent decode step, oldest first."""
        with self._cv:
            return self._recorder.recent_steps()

    def generate_alone(self, prompt: str, max_new_tokens: int) -> tuple[list[int], str]:
        """The unbatched greedy reference: one sequence, no padding, plain loop."""
        out = self.model.generate_alone(self.encode(prompt), max_new_tokens)
        # As the stream does: an incomplete final character is not text.
        return out, self.tokenizer.decode(out, skip_special_tokens=True).rstrip("\ufffd")

    # -- cancellation (any thread) ----------------------------------------------

    def _cancel(self, handle: GenerationHandle) -> None:
        with self._cv:
            if handle.finished is not None or handle.cancel_requested:
                return
            handle.cancel_requested = True
            for req in self._waiting:
                if req.handle is handle:  # never started: finish it here
                    self._waiting.remove(req)
                    events: Items = []
                    self._outbox.finish(req, StopReason.CANCELLED, into=events)
                    with contextlib.suppress(RuntimeError):  # the submitter's loop is closed
                        handle.loop.call_soon_threadsafe(deliver, events)
                    return
            self._cancels.add(handle.request_id)
            self._cv.notify()

    # -- scheduler thread ------------------------------------------------------

    def _run(self) -> None:
        LOG.info("llm scheduler started (%s)", self.policy)
        while True:
            with self._cv:
                while not (self._stopping or self._waiting or self._cancels or self._batch is not None):
                    self._cv.wait()
                if self._stopping:
                    break
                cancels, self._cancels = self._cancels, set()
                calls = self._admit(time.monotonic())
            pending = [r for group in calls for r in group]  # admitted, not yet in the batch
            try:
                self._retire(cancels, time.monotonic())
                for group in calls:
                    self._prefill(group)
                    pending = pending[len(group) :]
                    self._flush()  # these first tokens go out before the next call runs
                if self._batch is not None:
                    self._decode()
            except Exception as exc:  # a bug or a broken model: fail loudly, keep serving
                LOG.exception(
                    "llm step failed; failing %d running requests",
                    (self._batch.size if self._batch else 0) + len(pending),
                )
                for req in (self._batch.reqs if self._batch else []) + pending:
                    self._outbox.finish(req, StopReason.ERROR, error=f"{type(exc).__name__}: {exc}")
                self._batch = None
            self._flush()
        with self._cv:
            for req in (self._batch.reqs if self._batch else []) + list(self._waiting):
                self._outbox.finish(req, StopReason.CANCELLED)
            self._batch = None
            self._waiting.clear()
            self._flush_locked()
        LOG.info("llm scheduler stopped")

    def _admit(self, now: float) -> list[list[Request]]:
        """Finish the waiting requests past their deadline, then pop the ones to
        prefill now, grouped into calls (worker/llm/schedule.py). Holds _cv."""
        if not self._waiting:
            return []
        for r in [r for r in self._waiting if r.deadline <= now]:
            self._waiting.remove(r)
            self._outbox.finish(r, StopReason.DEADLINE)
        b = self._batch
        return self.policy.admit(
            self._waiting, b.size if b is not None else 0, int(b.need.max()) if b is not None else 0
        )

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
        for row in np.flatnonzero(gone).tolist():
            reason = StopReason.CANCELLED if cancelled[row] else StopReason.DEADLINE
            self._outbox.finish(b.reqs[row], reason, steps=int(b.steps[row]))
        self._batch = b.without(gone)

    def _prefill(self, group: list[Request]) -> None:
        logits, kv, padded, reused = self.model.prefill([r.prompt for r in group])  # (n, V)
        now = time.monotonic()
        for r in group:
            r.handle.prefills += 1
        sub = RunningBatch.prefilled(group, kv, kv.mask.sum(axis=1), now)
        self._recorder.prefilled(len(group), padded, reused)
        self._batch = RunningBatch.join(self._batch, self._accept(sub, self._choose(logits, sub), now))

    def _decode(self) -> None:
        b = self._batch
        assert b is not None
        logits, b.kv = self.model.decode(b.next_tokens, b.positions, b.kv)  # (B, V)
        now = time.monotonic()
        b.positions += 1
        b.steps += 1
        self._recorder.decoded(b)
        self._batch = self._accept(b, self._choose(logits, b), now)

    def _choose(self, logits: np.ndarray, b: RunningBatch) -> np.ndarray:
        """(B, V) logits -> (B,) next tokens (greedy rows never touch their generator;
        rows with a TitleConstraint are chosen under it)."""
        rngs = [r.rng for r in b.reqs] if (b.temperature > 0).any() else []
        cons = [r.constraint for r in b.reqs]
        if not any(cons):
            return choose(logits, b.temperature, b.top_p, rngs)
        follow = b.max_new - b.generated - 1  # tokens that may follow this one
        detoks, eos = [r.detok for r in b.reqs], self.config.eos_token_ids
        return choose_constrained(logits, b.temperature, b.top_p, rngs, cons, detoks, follow, eos)

    def _accept(self, b: RunningBatch, tokens: np.ndarray, now: float) -> RunningBatch | None:
        """Record one new token per row; stream text; drop rows that are done."""
        b.generated += 1
        eos = (tokens[:, None] == self._eos[None, :]).any(axis=1)  # (B,)
        done = eos | (b.generated >= b.max_new)
        first = b.generated == 1
        gaps = now - b.last_at
        b.last_at[:] = now
        self._recorder.sampled(b, eos, first, gaps, now)
        # Per sequence: detokenization is inherently one sequence at a time.
        for row, (req, token) in enumerate(zip(b.reqs, tokens.tolist(), strict=True)):
            if first[row]:
                req.handle.first_token_at = now
            if not eos[row]:
                piece = req.detok.push(token)
                if req.constraint is not None:
                    req.constraint.accept(piece)
                if piece:
                    self._outbox.text(req.handle, piece)
            if done[row]:
                reason = StopReason.EOS if eos[row] else StopReason.LENGTH
                self._outbox.finish(req, reason, steps=int(b.steps[row]))
        b.next_tokens = tokens
        return b.without(done)

    def _flush(self) -> None:
        with self._cv:
            self._flush_locked()

    def _flush_locked(self) -> None:
        """Deliver this step's events (one call_soon_threadsafe per loop)."""
        self._cancels.update(self._outbox.deliver())
