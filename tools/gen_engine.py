"""The LLM engine in process, timed on the CPU clock of the thread that runs the model.

    python -m tools.gen_engine prefill --llm OLD/llm --llm NEW/llm      # prefill variants
    python -m tools.gen_engine policy --llm NEW/llm --policy 512,512 --policy 256,1024
    python -m tools.gen_engine constraint --llm VERSION/llm    # grounded decoding on / off
    python -m tools.gen_engine iobinding --llm VERSION/llm     # KV cache on the device / numpy

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

`iobinding`: for each concurrency C (--concurrency, default 1, 8 and 32), C
server-shaped prompts submitted at once and decoded to the end (at most
--max-new tokens each) on two Generators of the same model, one with I/O
binding (the KV cache as OrtValues on the session's device, its rows gathered
and joined there) and one with the numpy loop, arms alternating; tokens per
CPU second of the scheduler thread (prefill, decode, row joins and drops,
token choice) and per wall second, and whether both arms chose the same tokens.
With --memory: each arm once per concurrency in a fresh process, its peak RSS.
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


class _GatedGenerator(_ClockedGenerator):
    """Admits nothing until `gate` requests wait: a wave submitted at once is then
    prefilled in the same calls, joining at the same steps, in every run. (int8
    MatMuls quantize each call's activations by their range over the whole batch,
    so rows grouped differently may choose different tokens on either path.)"""

    gate = 0

    def _admit(self, now: float) -> list[list[Request]]:  # holds _cv; wait() lets submit() in
        while len(self._waiting) < self.gate and not self._stopping:
            self._cv.wait(0.05)
        self.gate = 0
        return super()._admit(now)


def iobinding(llm_dir: Path, concurrency: list[int], reps: int, max_new: int) -> list[dict[str, Any]]:
    gens = {
        on: _GatedGenerator(llm_dir, threads=1, max_seqs=max(concurrency), io_binding=on)
        for on in (False, True)
    }
    # tokens, scheduler CPU s, wall s, per (io_binding, concurrency); the tokens chosen, the steps' rows
    sums = {(on, c): [0, 0.0, 0.0] for on in gens for c in concurrency}
    chosen: dict[tuple[bool, int], list[list[int]]] = {}
    steps: dict[bool, list[tuple[int, ...]]] = {}

    async def batch(g: _GatedGenerator, prompts: list[str]) -> list[list[int]]:
        g.gate = len(prompts)
        hs = [g.submit(p, max_new_tokens=max_new) for p in prompts]
        await asyncio.gather(*(h.result() for h in hs))
        return [h.token_ids for h in hs]

    for g in gens.values():
        g.clock, g.marks = 0.0, {}
        g.start()
    try:
        for rep in range(reps + 1):  # the first round warms up
            for c in concurrency:
                prompts = [build_prompt(g.config, message(rep * 64 + i), RESPONSE_PRIMER) for i in range(c)]
                for on in (rep % 2 == 0, rep % 2 == 1):
                    g = gens[on]
                    c0, w0, t0 = g.clock, time.perf_counter(), g.stats().tokens_generated
                    n0 = g.stats().decode_steps
                    chosen[on, c] = asyncio.run(batch(g, prompts))
                    steps[on] = g.recent_steps()[-(g.stats().decode_steps - n0) :]
                    if rep:
                        a = sums[on, c]
                        a[0] += g.stats().tokens_generated - t0
                        a[1] += g.clock - c0
                        a[2] += time.perf_counter() - w0
                same, plan = chosen[False, c] == chosen[True, c], steps[False] == steps[True]
                print(
                    json.dumps({"rep": rep, "concurrency": c, "same_tokens": same, "same_steps": plan}),
                    flush=True,
                )
                assert same, f"the two arms chose different tokens at concurrency {c} (same steps: {plan})"
    finally:
        for g in gens.values():
            g.stop()
    out = []
    for c in concurrency:
        row: dict[str, Any] = {"concurrency": c, "reps": reps}
        for on in (False, True):
            tokens, cpu, wall = sums[on, c]
            arm = "binding" if on else "numpy"
            row[f"{arm}_tokens"] = tokens
            row[f"{arm}_scheduler_cpu_s"] = round(cpu, 2)
            row[f"{arm}_tokens_per_cpu_s"] = round(tokens / cpu, 1)
            row[f"{arm}_tokens_per_wall_s"] = round(tokens / wall, 1)
        row["cpu_ratio"] = round(row["binding_tokens_per_cpu_s"] / row["numpy_tokens_per_cpu_s"], 3)
        row["wall_ratio"] = round(row["binding_tokens_per_wall_s"] / row["numpy_tokens_per_wall_s"], 3)
        out.append(row)
    return out


def _arm_rss(llm_dir: Path, on: bool, c: int, max_new: int) -> dict[str, Any]:
    """One arm in this (fresh) process: C requests at once; peak RSS after loading and at the end."""
    import resource

    g = _GatedGenerator(llm_dir, threads=1, max_seqs=c, io_binding=on)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024

    async def run() -> int:
        msgs = [build_prompt(g.config, message(i), RESPONSE_PRIMER) for i in range(c)]
        g.gate = c
        hs = [g.submit(p, max_new_tokens=max_new) for p in msgs]
        await asyncio.gather(*(h.result() for h in hs))
        return sum(len(h.token_ids) for h in hs)

    with g:
        tokens = asyncio.run(run())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return {
        "io_binding": on,
        "concurrency": c,
        "tokens": tokens,
        "rss_loaded_mb": loaded,
        "rss_peak_mb": peak,
    }


def iobinding_memory(llm_dir: Path, concurrency: list[int], max_new: int) -> list[dict[str, Any]]:
    """Peak RSS per arm, each in its own process (one process's peak says nothing of a second arm)."""
    import multiprocessing as mp

    out = []
    with mp.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for c in concurrency:
            for on in (False, True):
                out.append(pool.apply(_arm_rss, (llm_dir, on, c, max_new)))
                print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gen_engine", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=["prefill", "policy", "constraint", "iobinding"])
    p.add_argument("--llm", action="append", required=True, help="a model version's llm/ folder")
    p.add_argument("--reps", type=int, default=6, help="prefill: repetitions")
    p.add_argument("--policy", action="append", default=[], help="policy: MAX_PREFILL_TOKENS,BUDGET")
    p.add_argument("--clients", type=int, default=16, help="policy: closed-loop clients; constraint: batch")
    p.add_argument("--duration", type=float, default=25.0, help="policy: measured CPU seconds")
    p.add_argument("--concurrency", default="1,8,32", help="iobinding: requests at once, comma-separated")
    p.add_argument("--max-new", type=int, default=32, help="iobinding: new tokens per request at most")
    p.add_argument("--memory", action="store_true", help="iobinding: peak RSS per arm instead of speed")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.kind == "prefill":
        res = prefill([Path(d) for d in args.llm], args.reps)
        for row in res:
            print(json.dumps(row))
    elif args.kind == "iobinding":
        conc = [int(x) for x in args.concurrency.split(",")]
        if args.memory:
            res = iobinding_memory(Path(args.llm[0]), conc, args.max_new)
        else:
            res = iobinding(Path(args.llm[0]), conc, args.reps, args.max_new)
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
