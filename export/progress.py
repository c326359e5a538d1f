"""One overall progress display for `recgen export`: the current stage, how much of the whole
export is done, and an ETA.

    progress = ExportProgress(plan(cfg, rows), mode=display_mode(force=False))
    progress.start("read")            # each stage starts where the previous one ends
    ...
    progress.rescale(len(ds))         # the real row count, once the data is read
    progress.start("tune")
    ...
    progress.finish()

The ETA comes from each stage's expected duration, measured on real exports (STAGES: a fixed
part plus a part per million interactions, fitted to the default ML-100K export and the 10M
run of docs/bench.md), rescaled by this machine's speed so far (expected / actual seconds of
the stages already done). So a stage that is always long (tuning, the LLM) weighs what it
costs, and a slow machine's ETA stretches after the first stage.

Modes: "bar": one tqdm bar on stderr (a terminal, or forced with --progress), log lines routed
around it; "log": one INFO line per stage with elapsed and ETA (fields stage / elapsed_s /
eta_s in JSON logs), for pipelines and files. It does not show progress inside a stage (the
steps' own bars and logs do), nor decide what the stages do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

LOG = logging.getLogger(__name__)

REFRESH_S = 1.0  # how often the bar redraws its ETA within a stage
SPEED_BOUNDS = (0.05, 20.0)  # this machine vs the reference, as far as we believe it
# Reference seconds assumed on time before any stage finished: a stage of a few seconds (or a
# no-op) barely moves the speed estimate, a minute-long one mostly decides it.
PRIOR_S = 10.0


@dataclass(frozen=True)
class Stage:
    key: str
    label: str
    fixed_s: float  # expected seconds at any size (set-up, fixed sample sizes, the LLM)
    per_m_rows_s: float = 0.0  # plus this per million interactions

    def expected_s(self, rows: int) -> float:
        return self.fixed_s + self.per_m_rows_s * rows / 1e6


# In pipeline order. Fixed + per-million-row parts from two measured points per stage: the
# default ML-100K export (0.1M rows, every step; 2026-12-06, `recgen export --no-promote` with
# the log lines of this module) and the 10M `--no-llm --no-encoder` export of docs/bench.md
# (tuning 591 s, evaluation 319 s, final fit 61 s, histories 13.5 s, index 2.6 s, context 68 s,
# a 10M-row CSV read in ~15 s). Both ran on a shared 2-core machine. The ML-100K run's encoder
# (130 s) and LLM (1,057 s: ONNX export + int8 ~7 min, perplexity fp32 + int8 ~7.5 min,
# grounding ~2.5 min) ran at a load average of ~14, several times their fair share; they are
# entered at a quarter and an eighth of that (issue 21 measured the LLM export alone at 32 s),
# since the speed factor corrects a loaded machine's ETA anyway.
STAGES: tuple[Stage, ...] = (
    Stage("read", "reading the interaction log", 1.0, 1.5),
    Stage("tune", "tuning ALS on a validation split", 51.6, 53.9),
    Stage("evaluate", "evaluating on held-out data", 9.8, 30.9),
    Stage("train", "training the served model on all data", 9.5, 5.2),
    Stage("histories", "writing user histories, factors and scorer", 0.4, 1.3),
    Stage("index", "building the FAISS index", 1.2, 0.1),
    Stage("encoder", "exporting the content encoder", 32.0, 0.0),
    Stage("context", "learning what request context adds", 30.0, 3.8),
    Stage("llm", "exporting the language model and probing its quality", 130.0, 0.0),
    Stage("commit", "checksumming and committing the version", 1.0, 0.0),
)
BY_KEY = {s.key: s for s in STAGES}


def plan(
    *, tune: bool = True, train: bool = True, encoder: bool = True, context: bool = True, llm: bool = True
) -> list[Stage]:
    """The stages an export with these steps runs, in order (tune: a grid search; given params
    or imported factors have none; imported factors are not trained either)."""
    skip = {
        "tune": not tune,
        "train": not train,
        "encoder": not encoder,
        "context": not context,
        "llm": not llm,
    }
    return [s for s in STAGES if not skip.get(s.key, False)]


def rows_guess(paths: Iterable[str | None], default: int = 100_000) -> int:
    """Interactions before the data is read: ~24 bytes a CSV row, ~8 a Parquet one."""
    total = 0
    for p in paths:
        if p:
            with contextlib.suppress(OSError):
                total += os.path.getsize(p) // (8 if p.endswith(".parquet") else 24)
    return total or default


def display_mode(force: bool, stream: IO[str] | None = None) -> str:
    """A bar on a terminal (or when forced), else log lines; JSON logs get lines, never a bar."""
    stream = sys.stderr if stream is None else stream
    if force:
        return "bar"
    json_logs = any(
        type(h.formatter).__name__ == "JsonFormatter" for h in logging.getLogger().handlers if h.formatter
    )
    isatty = getattr(stream, "isatty", lambda: False)()
    return "bar" if isatty and not json_logs else "log"


def fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ExportProgress:
    def __init__(
        self,
        stages: list[Stage],
        rows: int,
        *,
        mode: str = "log",
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert mode in ("bar", "log", "off"), f"unknown progress mode {mode!r}"
        assert stages, "an export with no stages"
        self.stages, self.rows, self.mode, self.clock = list(stages), rows, mode, clock
        self.stream = sys.stderr if stream is None else stream
        self.t0 = clock()
        self.current: int | None = None  # index into stages
        self.finished = False
        self.t_stage = self.t0
        self.done_expected = self.done_actual = 0.0
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the estimate -------------------------------------------------------------------------
    def speed(self) -> float:
        """Expected / actual seconds of the finished stages, shrunk towards 1 by PRIOR_S."""
        lo, hi = SPEED_BOUNDS
        return min(hi, max(lo, (self.done_expected + PRIOR_S) / (self.done_actual + PRIOR_S)))

    def eta_s(self, now: float | None = None) -> float:
        if self.finished:
            return 0.0
        now = self.clock() if now is None else now
        speed = self.speed()
        nxt = 0 if self.current is None else self.current + 1
        rest = sum(s.expected_s(self.rows) for s in self.stages[nxt:]) / speed
        if self.current is None:
            return rest
        cur = self.stages[self.current].expected_s(self.rows) / speed
        e = now - self.t_stage
        # Overran its estimate: assume a little more, growing with the overrun, never 0.
        return rest + max(cur - e, 0.05 * max(e, cur))

    def fraction(self, now: float | None = None) -> float:
        """Share of the export done, by time: elapsed / (elapsed + ETA)."""
        now = self.clock() if now is None else now
        if self.current is None and self.done_actual == 0.0:
            return 0.0
        elapsed = now - self.t0
        return elapsed / max(1e-9, elapsed + self.eta_s(now))

    # -- the stages ---------------------------------------------------------------------------
    def rescale(self, rows: int) -> None:
        """The real interaction count (known once the data is read)."""
        with self._lock:
            self.rows = max(1, rows)

    def __contains__(self, key: str) -> bool:
        return any(s.key == key for s in self.stages)

    def start(self, key: str) -> None:
        """Ends the current stage and starts `key` (a later stage of the plan)."""
        keys = [s.key for s in self.stages]
        assert key in keys, f"stage {key!r} is not in this export's plan {keys}"
        i = keys.index(key)
        assert self.current is None or i > self.current, f"stage {key!r} after {keys[self.current]!r}"
        now = self.clock()
        with self._lock:
            self._end_current(now)
            # Planned stages jumped over (did not run) simply leave the remaining estimate.
            self.current, self.t_stage = i, now
        self._show(f"[{i + 1}/{len(self.stages)}] {self.stages[i].label}", now)
        if self.mode == "bar":
            self._open_bar()

    def finish(self) -> None:
        now = self.clock()
        with self._lock:
            self._end_current(now)
            self.current, self.finished = len(self.stages) - 1, True
        total = now - self.t0
        if self.mode == "log":
            LOG.info(
                "export: all %d stages done in %s",
                len(self.stages),
                fmt_s(total),
                extra={"fields": {"stage": "done", "elapsed_s": round(total, 1), "eta_s": 0.0}},
            )
        self.close()
        if self.mode == "bar":
            LOG.info("export: all %d stages done in %s", len(self.stages), fmt_s(total))

    def close(self) -> None:
        """Stop the bar (idempotent); log lines go back to the handlers they came from."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * REFRESH_S)
            self._thread = None
        if self._bar is not None:
            if self.finished:
                self._bar.n = self._bar.total
                self._bar.set_postfix_str("ETA 0s", refresh=False)
            self._bar.close()
            self._bar = None
        if self._redirect is not None:
            self._redirect.close()
            self._redirect = None

    def _end_current(self, now: float) -> None:
        if self.current is not None and now > self.t_stage:
            self.done_expected += self.stages[self.current].expected_s(self.rows)
            self.done_actual += now - self.t_stage
            self.t_stage = now

    # -- the display --------------------------------------------------------------------------
    def _show(self, what: str, now: float) -> None:
        elapsed, eta = now - self.t0, self.eta_s(now)
        if self.mode == "log":
            LOG.info(
                "export: %s (%s elapsed, ETA %s)",
                what,
                fmt_s(elapsed),
                fmt_s(eta),
                extra={
                    "fields": {
                        "stage": self.stages[self.current or 0].key,
                        "elapsed_s": round(elapsed, 1),
                        "eta_s": round(eta, 1),
                    }
                },
            )
        elif self.mode == "bar":
            if self._bar is not None:
                self._bar.set_description_str(f"export {what}", refresh=False)
            LOG.debug("export: %s", what)

    def _open_bar(self) -> None:
        if self._bar is not None:
            self._redraw()
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(logging_redirect_tqdm())  # log lines above the bar, not through it
        i = self.current or 0
        self._bar = tqdm(
            total=1000,
            file=self.stream,
            desc=f"export [{i + 1}/{len(self.stages)}] {self.stages[i].label}",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}",  # postfix: ", ETA .."
            dynamic_ncols=True,
            position=0,
            leave=True,
        )
        self._redraw()
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh, name="export-progress", daemon=True)
        self._thread.start()

    def _redraw(self) -> None:
        if self._bar is None:
            return
        with self._lock:
            now = self.clock()
            self._bar.n = min(999, int(1000 * self.fraction(now)))
            self._bar.set_postfix_str(f"ETA {fmt_s(self.eta_s(now))}", refresh=False)
        self._bar.refresh()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self._redraw()

    def __enter__(self) -> ExportProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
