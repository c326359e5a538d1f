"""The LLM engine in process, timed on the CPU clock of the thread that runs the model.

    python -m tools.gen_engine prefill --llm OLD/llm --llm NEW/llm      # prefill variants
    python -m tools.gen_engine policy --llm NEW/llm --policy 512,512 --policy 256,1024
    python -m tools.gen_engine constraint --llm VERSION/llm    # grounded decoding on / off

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

`constraint`: batches of N grounded texts (3 history + 3 recommended titles of
the version's catalog.jsonl, `generate_grounded` with the check on) decoded
with and without the TitleConstraint, arms interleaved in one run, the same
Generator; tokens per CPU second of the scheduler thread (prefill, decode and
token choice) and per wall second, re-chosen tokens, texts the check stopped.
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


async def _grounded_batch(
    g: _ClockedGenerator, checker: Any, cases: list[tuple[str, set[int]]], constrained: bool
) -> list[Any]:
    from worker.llm.grounded import TextDone, generate_grounded

    async def one(prompt: str, allowed: set[int]) -> Any:
        async for ev in generate_grounded(
            g, checker, prompt, allowed, primer=RESPONSE_PRIMER, max_new_tokens=32, constrained=constrained
        ):
            if isinstance(ev, TextDone):
                return ev
        raise AssertionError("no TextDone")

    return await asyncio.gather(*(one(p, a) for p, a in cases))


def constraint(llm_dir: Path, batch: int, reps: int) -> list[dict[str, Any]]:
    from recgen.core.grounding import GroundingChecker
    from recgen.core.prompt import build_user_message

    titles = [json.loads(line)["title"] for line in (llm_dir.parent / "catalog.jsonl").open()]
    checker = GroundingChecker(titles, boundary="word")
    rng = np.random.default_rng(0)
    seen: list[Any] = []  # every TitleConstraint submitted

    class Gen(_ClockedGenerator):
        def submit(self, prompt: str, **kw: Any) -> Any:
            seen.append(kw.get("constraint"))
            return super().submit(prompt, **kw)

    g = Gen(llm_dir, threads=1, max_seqs=batch, allow_spinning=False)
    g.clock, g.marks = 0.0, {}
    arms = {False: [0, 0.0, 0.0, 0, 0], True: [0, 0.0, 0.0, 0, 0]}  # tokens, cpu s, wall s, texts, ungrounded
    g.start()
    try:
        for rep in range(reps + 1):  # the first round warms up
            rows = rng.choice(
                len(titles), size=(batch, 6), replace=False if batch * 6 <= len(titles) else True
            )
            cases = [
                (
                    build_prompt(
                        g.config,
                        build_user_message([titles[i] for i in r[:3]], [titles[i] for i in r[3:]]),
                        RESPONSE_PRIMER,
                    ),
                    set(r.tolist()),
                )
                for r in rows
            ]
            for on in (rep % 2 == 0, rep % 2 == 1):
                c0, w0, s0 = g.clock, time.perf_counter(), g.stats().tokens_generated
                done = asyncio.run(_grounded_batch(g, checker, cases, on))
                if rep:
                    a = arms[on]
                    a[0] += g.stats().tokens_generated - s0
                    a[1] += g.clock - c0
                    a[2] += time.perf_counter() - w0
                    a[3] += len(done)
                    a[4] += sum(d.stop_reason == "ungrounded" for d in done)
            if not rep:
                seen.clear()  # count the measured rounds only
    finally:
        g.stop()
    out = [
        {
            "constrained": on,
            "batch": batch,
            "texts": a[3],
            "tokens": a[0],
            "tokens_per_cpu_s": round(a[0] / a[1], 1),
            "tokens_per_wall_s": round(a[0] / a[2], 1),
            "ungrounded_texts": a[4],
        }
        for on, a in arms.items()
    ]
    out[1]["rejected_candidates"] = sum(c.repicks for c in seen if c is not None)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gen_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["prefill", "policy", "constraint"])
    p.add_argument("--llm", action="append", required=True, help="a model version's llm/ folder")
    p.add_argument("--reps", type=int, default=6, help="prefill: repetitions")
    p.add_argument("--policy", action="append", default=[], help="policy: MAX_PREFILL_TOKENS,BUDGET")
    p.add_argument("--clients", type=int, default=16, help="policy: closed-loop clients; constraint: batch")
    p.add_argument("--duration", type=float, default=25.0, help="policy: measured CPU seconds")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.kind == "prefill":
        res = prefill([Path(d) for d in args.llm], args.reps)
        for row in res:
            print(json.dumps(row))
    elif args.kind == "constraint":
        res = constraint(Path(args.llm[0]), args.clients, args.reps)
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
