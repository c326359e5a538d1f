"""The LLM engine in process, timed on the CPU clock of the thread that runs the model.

    python -m tools.gen_engine prefill --llm OLD/llm --llm NEW/llm      # prefill variants
    python -m tools.gen_engine policy --llm NEW/llm --policy 512,512 --policy 256,1024

With 1 ONNX Runtime thread the model runs on the calling thread, so that
thread's CPU time (`time.thread_time`) measures the model's work and is moved
less than wall time by other jobs on a shared machine (cache and memory
contention still move it: compare variants of one run only).

`prefill`: 4 server-shaped prompts (the chat template, ~98 tokens) prefilled
at once, per llm folder without and with the cached prompt prefix, interleaved
repetitions; min and median CPU ms, and the next tokens (they must agree).

`policy`: N closed-loop clients on one Generator (max 20 new tokens each), per
admission policy (max_prefill_tokens, prefill_budget); the clock is the CPU
time the scheduler thread spent in prefill and decode, and each request's
time to its 1st and 4th token is read on it (the first visible text needs a
few tokens: the grounding check holds back a title still being written).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recgen.core.prompt import RESPONSE_PRIMER, build_prompt
from worker.llm.api import LLMConfig
from worker.llm.batch import Request, RunningBatch
from worker.llm.engine import Generator
from worker.llm.session import DecoderSession, make_session

_TITLES = [
    "Star Wars (1977)",
    "Fargo (1996)",
    "Heat (1995)",
    "Casino (1995)",
    "Toy Story (1995)",
    "Emma (1996)",
    "Casablanca (1942)",
    "Se7en (1995)",
    "Babe (1995)",
]


def message(i: int) -> str:
    """A message shaped like worker/service.py's: 3 history titles, 3 to recommend."""
    t = [_TITLES[(i + k) % len(_TITLES)] for k in (0, 2, 4, 1, 5, 7)]
    return (
        f"I recently watched {t[0]}, {t[1]} and {t[2]}. Write one short sentence recommending "
        f"{t[3]}, {t[4]} and {t[5]} to me. Mention no other movies."
    )


def prefill(llm_dirs: list[Path], reps: int) -> list[dict[str, Any]]:
    from tokenizers import Tokenizer

    arms: list[dict[str, Any]] = []
    for d in llm_dirs:
        cfg = LLMConfig.load(d)
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        prompts = [
            tok.encode(build_prompt(cfg, message(i), RESPONSE_PRIMER), add_special_tokens=False).ids
            for i in range(4)
        ]
        session = make_session(d / "model.onnx", threads=1, providers=["CPUExecutionProvider"])
        for cached in (False, True):
            model = DecoderSession(session, cfg)
            if cached:
                model.cache_prefix(tok.encode(cfg.prompt_prefix, add_special_tokens=False).ids)
            arms.append(
                {"llm": str(d), "prefix_cached": cached, "model": model, "prompts": prompts, "ms": []}
            )
    for _ in range(reps):
        for arm in arms:
            t = time.thread_time()
            logits, _, padded, reused = arm["model"].prefill(arm["prompts"])
            arm["ms"].append((time.thread_time() - t) * 1e3)
            arm.update(next_tokens=logits.argmax(-1).tolist(), tokens_fed=padded, prefix_tokens=reused)
    return [
        {
            "llm": a["llm"],
            "logits_to_keep": a["model"].logits_to_keep,
            "prefix_cached": a["prefix_cached"],
            "tokens_fed": a["tokens_fed"],
            "prefix_tokens": a["prefix_tokens"],
            "cpu_ms_min": round(min(a["ms"])),
            "cpu_ms_median": round(statistics.median(a["ms"])),
            "next_tokens": a["next_tokens"],
        }
        for a in arms
    ]


class _ClockedGenerator(Generator):
    """A Generator that advances `clock` by the CPU time of its forward passes and marks tokens on it."""

    clock = 0.0
    marks: dict[int, list[float | None]] = {}

    def _prefill(self, group: list[Request]) -> None:
        t = time.thread_time()
        super()._prefill(group)
        self.clock += time.thread_time() - t

    def _decode(self) -> None:
        t = time.thread_time()
        super()._decode()
        self.clock += time.thread_time() - t

    def _accept(self, b: RunningBatch, tokens: np.ndarray, now: float) -> RunningBatch | None:
        for req, n in zip(b.reqs, b.generated.tolist(), strict=True):
            mark = self.marks.get(req.handle.request_id)
            if mark is not None and n + 1 in (1, 4):
                mark[1 if n == 0 else 2] = self.clock
        return super()._accept(b, tokens, now)


async def _closed_loop(g: _ClockedGenerator, clients: int, warmup: float, duration: float) -> dict[str, Any]:
    done: list[list[float | None]] = []

    async def client(j: int) -> None:
        k = j
        while g.clock < warmup + duration:
            h = g.submit(build_prompt(g.config, message(k), RESPONSE_PRIMER), max_new_tokens=20)
            k += clients
            g.marks[h.request_id] = mark = [g.clock, None, None]
            async for _ in h:
                pass
            if mark[0] is not None and mark[0] >= warmup and mark[1] is not None:
                done.append(mark)

    s0 = g.stats()
    await asyncio.gather(*(client(j) for j in range(clients)))
    s1 = g.stats()
    first = np.array([m[1] - m[0] for m in done])  # type: ignore[operator]
    fourth = np.array([(m[2] or m[1]) - m[0] for m in done])  # type: ignore[operator]

    def pct(a: np.ndarray, q: float) -> int:
        return round(float(np.percentile(a, q)) * 1e3)

    return {
        "answers": len(done),
        "tokens_per_cpu_s": round((s1.tokens_generated - s0.tokens_generated) / g.clock, 1),
        "first_token_ms_p50_p99": [pct(first, 50), pct(first, 99)],
        "fourth_token_ms_p50_p99": [pct(fourth, 50), pct(fourth, 99)],
        "prefill_calls": s1.prefill_calls - s0.prefill_calls,
        "decode_steps": s1.decode_steps - s0.decode_steps,
    }


def policy(
    llm_dir: Path, policies: list[tuple[int, int]], clients: int, duration: float
) -> list[dict[str, Any]]:
    out = []
    for max_prefill, budget in policies:
        g = _ClockedGenerator(
            llm_dir, threads=1, max_prefill_tokens=max_prefill, prefill_budget=budget, allow_spinning=False
        )
        g.clock, g.marks = 0.0, {}
        g.start()
        try:
            res = asyncio.run(_closed_loop(g, clients, warmup=4.0, duration=duration))
        finally:
            g.stop()
        out.append({"max_prefill_tokens": max_prefill, "prefill_budget": budget, **res})
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gen_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["prefill", "policy"])
    p.add_argument("--llm", action="append", required=True, help="a model version's llm/ folder")
    p.add_argument("--reps", type=int, default=6, help="prefill: repetitions")
    p.add_argument("--policy", action="append", default=[], help="policy: MAX_PREFILL_TOKENS,BUDGET")
    p.add_argument("--clients", type=int, default=16, help="policy: closed-loop clients")
    p.add_argument("--duration", type=float, default=25.0, help="policy: measured CPU seconds")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.kind == "prefill":
        res = prefill([Path(d) for d in args.llm], args.reps)
        for row in res:
            print(json.dumps(row))
    else:
        pols = [tuple(int(x) for x in s.split(",")) for s in args.policy or ["512,512", "256,1024"]]
        res = policy(Path(args.llm[0]), pols, args.clients, args.duration)  # type: ignore[arg-type]
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
