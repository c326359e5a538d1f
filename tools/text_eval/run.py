"""One evaluation end to end, in process: load the version, rank the cases, write and score the texts.

Per precision the version holds (`precisions`), per arm (tools/text_eval/arms.py): one pass over
every case by `concurrency` closed-loop clients on the version's own `Generator` (the texts that
are scored, and the tokens/s and TTFT at that concurrency), then one pass over the first
`c1_requests` cases by one client (tokens/s and TTFT at concurrency 1). Each text has a deadline;
the run is bounded by cases x max_new_tokens. No server, no network.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recgen.config import WorkerConfig
from tools.harness.percentiles import latency_ms
from tools.text_eval import arms as arms_mod
from tools.text_eval.cases import Case
from tools.text_eval.metrics import ClaimChecks, TextScore, score_text, summarize
from tools.text_eval.rank import Shown, shown_cases
from worker.llm.grounded import TextDone
from worker.llm.stats import RECENT
from worker.metrics import Metrics
from worker.model import LoadedModel

LOG = logging.getLogger(__name__)

PRECISION_NOTE = (
    "a model version stores only the precision it serves (export/llm/onnx_export.py ships one "
    "model.onnx; fp32 is built and measured during export, then dropped), so only that one is reported"
)


_PROBE_KEYS = ("grounding", "names", "perplexity")  # llm.json quality entries worth repeating


@dataclass(frozen=True)
class Config:
    arms: tuple[str, ...] = arms_mod.DEFAULT_ARMS
    concurrency: int = 32
    c1_requests: int = 8
    max_new_tokens: int = 48  # WorkerConfig.max_new_tokens, what a text gets by default
    threads: int = 2
    text_timeout_s: float = 180.0
    prefix_cache: bool = True  # the worker's cached prompt head (worker/model.py); False: whole prefills


@dataclass(frozen=True)
class Generated:
    shown: Shown
    plan: arms_mod.CasePlan
    text: str  # everything the arm showed
    stop_reason: str
    reason: str  # TextDone.reason: why it stopped, what a gate removed
    tokens: int
    seconds: float
    first_text_s: float | None  # submission to the first shown text (what a streaming caller waits)


def precisions(model: LoadedModel) -> dict[str, LoadedModel]:
    """precision -> the model serving it; a version holds one (PRECISION_NOTE)."""
    assert model.llm_cfg is not None, f"model version {model.name} has no language model"
    return {str(model.llm_cfg.get("precision", "unknown")): model}


async def generate_all(
    model: LoadedModel, shown: Sequence[Shown], arm: arms_mod.Arm, concurrency: int, cfg: Config
) -> tuple[list[Generated], dict[str, Any]]:
    """Every case's text, `concurrency` clients each taking the next case; and the pass's speed."""
    llm = model.llm
    assert llm is not None
    todo = iter(enumerate(shown))
    out: list[Generated | None] = [None] * len(shown)

    async def client() -> None:
        for i, s in todo:
            t = time.perf_counter()
            done: TextDone | None = None
            first: float | None = None
            deadline = time.monotonic() + cfg.text_timeout_s
            p = arms_mod.plan(model, s, arm, cfg.max_new_tokens)
            events = arms_mod.stream(model, s, arm, p, max_new_tokens=cfg.max_new_tokens, deadline=deadline)
            async for ev in events:
                if isinstance(ev, TextDone):
                    done = ev
                elif first is None and ev.text:
                    first = time.perf_counter() - t
            assert done is not None, "a text stream ended without its TextDone"
            out[i] = Generated(
                s,
                p,
                done.text,
                str(done.stop_reason),
                done.reason,
                done.tokens,
                time.perf_counter() - t,
                first,
            )

    before = llm.stats()
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    after = llm.stats()
    texts = [g for g in out if g is not None]
    ttft = after.ttft_s[len(before.ttft_s) :] if len(after.ttft_s) < RECENT else []
    # Decode time per token (the engine's gaps between a row's tokens): tokens/s above also
    # carries each text's prefill, which a short continuation after a long opening amortizes less.
    gaps = after.token_latency_s[len(before.token_latency_s) :] if len(after.token_latency_s) < RECENT else []
    first_text = [g.first_text_s for g in texts if g.first_text_s is not None]
    tokens = sum(g.tokens for g in texts)
    speed = {
        "concurrency": concurrency,
        "requests": len(texts),
        "tokens": tokens,
        "seconds": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else 0.0,
        "ttft_ms": latency_ms(ttft, (("p50", 50), ("p99", 99)), digits=0, stats=("n",)),
        "token_ms": latency_ms(gaps, (("p50", 50), ("p99", 99)), digits=1, stats=("n",)),
        "first_text_ms": latency_ms(first_text, (("p50", 50), ("p99", 99)), digits=0, stats=("n",)),
    }
    return texts, speed


def _score(model: LoadedModel, texts: Sequence[Generated]) -> list[TextScore]:
    catalog, checker = model.catalog, model.checker
    assert checker is not None, "a version with a language model has a grounding checker"
    checks = ClaimChecks.build(
        [it.categories for it in catalog], [it.text for it in catalog], [it.title for it in catalog]
    )
    return [
        score_text(
            g.shown.case.case,
            g.text,
            g.stop_reason,
            history_rows=g.shown.history_rows,
            rec_rows=g.shown.rec_rows,
            intent_words=g.shown.case.intent_words,
            instructions=g.plan.instructions,
            checker=checker,
            checks=checks,
            floor=g.plan.floor,
        )
        for g in texts
    ]


def _prompt_tokens(model: LoadedModel, texts: Sequence[Generated]) -> dict[str, float]:
    """Mean prompt tokens per text, and mean tokens a prefill feeds (after the Generator's cached
    prefix when the prompt starts with it, as worker/llm/session.py prefills)."""
    llm = model.llm
    assert llm is not None
    prefix = tuple(llm.model.prefix)
    whole, fed = [], []
    for g in texts:
        ids = llm.encode(g.plan.text_plan.prompt)
        whole.append(len(ids))
        reuses = bool(prefix) and len(ids) > len(prefix) and tuple(ids[: len(prefix)]) == prefix
        fed.append(len(ids) - len(prefix) if reuses else len(ids))
    n = max(len(texts), 1)
    return {
        "mean": round(sum(whole) / n, 1),
        "mean_fed": round(sum(fed) / n, 1),
        "cached_prefix": len(prefix),
    }


_NOT_FLAGS = ("case", "stop_reason", "words", "distinct_2")


def _sample(model: LoadedModel, g: Generated, s: TextScore) -> dict[str, Any]:
    titles = [it.title for it in model.catalog]
    c = g.shown.case
    return {
        "case": c.case,
        "locale": c.locale,
        "intent": c.intent,
        "history": [titles[r] for r in g.shown.history_rows],
        "recommended": [titles[r] for r in g.shown.rec_rows],
        "text": g.text,
        "stop_reason": g.stop_reason,
        "reason": g.reason,
        "flags": {k: v for k, v in asdict(s).items() if k not in _NOT_FLAGS},
    }


def sample_cases(cases: Sequence[Case], n: int = 10) -> list[str]:
    """A fixed spread of cases to show: 5 without intent, 2 with a wish, 2 injections, 1 zh-CN."""
    plain = [c.case for c in cases if not c.intent and c.locale == "en-US"]
    wish = [c.case for c in cases if c.intent and not c.adversarial]
    inject = [c.case for c in cases if c.adversarial]
    zh = [c.case for c in cases if c.locale != "en-US"]
    picked = list(dict.fromkeys(plain[:5] + wish[:2] + inject[:2] + zh[:1]))
    rest = [c.case for c in cases if c.case not in picked]
    return (picked + rest)[:n]


async def _evaluate(model: LoadedModel, cases: Sequence[Case], cfg: Config) -> list[dict[str, Any]]:
    shown = shown_cases(model, cases)
    samples = sample_cases(cases)
    rows = []
    for precision, m in precisions(model).items():
        for name in cfg.arms:
            arm = arms_mod.ARMS[name]
            LOG.info("arm %s, %s: %d cases at concurrency %d", name, precision, len(shown), cfg.concurrency)
            texts, speed_n = await generate_all(m, shown, arm, cfg.concurrency, cfg)
            _, speed_1 = await generate_all(m, shown[: cfg.c1_requests], arm, 1, cfg)
            scores = _score(m, texts)
            prompt = _prompt_tokens(m, texts)
            by_case = {s.case: (g, s) for g, s in zip(texts, scores, strict=True)}
            rows.append(
                {
                    "arm": name,
                    "description": arm.description,
                    "precision": precision,
                    "config": arms_mod.resolve(arm, cfg.max_new_tokens),
                    **summarize(scores),
                    "speed": {"c1": speed_1, f"c{cfg.concurrency}": speed_n},
                    "prompt_tokens": prompt,
                    "samples": [_sample(m, *by_case[c]) for c in samples if c in by_case],
                    "per_text": [{**asdict(s), "text": g.text} for g, s in zip(texts, scores, strict=True)],
                }
            )
    return rows


def evaluate(models: Path, version: str | None, cases: Sequence[Case], cfg: Config) -> dict[str, Any]:
    """Load the version, measure every arm x precision; the JSON-ready result."""
    wcfg = WorkerConfig(threads=cfg.threads, max_seqs=max(cfg.concurrency, 1))
    model = LoadedModel.load(models, version, wcfg, Metrics(), prefix_cache=cfg.prefix_cache)
    try:
        if model.llm is None:
            raise SystemExit(f"model version {model.name} in {models} has no language model")
        model.warmup()
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        rows = asyncio.run(_evaluate(model, cases, cfg))
        quality = (model.llm_cfg or {}).get("quality") or {}
        return {
            "version": model.name,
            "llm_source": (model.llm_cfg or {}).get("source"),
            "precision_note": PRECISION_NOTE,
            "export_probe": {k: v for k, v in quality.items() if k.startswith(_PROBE_KEYS)},
            "cases": len(cases),
            "config": asdict(cfg),
            "claims_source": "recgen/core/claims.py",
            "seconds": round(time.perf_counter() - t0, 1),
            # The machine's 1-minute load average at the start and the end: speed is only
            # comparable between runs on an equally quiet machine (arms of one run share it).
            "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "cpus": os.cpu_count(),
            "rows": rows,
        }
    finally:
        model.close()
