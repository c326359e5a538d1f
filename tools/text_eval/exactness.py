"""How often the served engine's greedy tokens differ from the unbatched reference, with and
without the cached prompt head (docs/text.md, "int8 exactness").

    python -m tools.text_eval.exactness --models DIR [--version V] [--limit N] [--max-new-tokens 16]

For each case of tools/text_eval/cases.jsonl, the served default prompt (worker/explain.py
`plan_text`, TextOptions()) is decoded greedily, free (no title constraint, so the model's own
choices are compared), at most `--max-new-tokens` tokens, four ways:

* reference: `Generator.generate_alone`, one sequence, the whole prompt fed, every position's
  logits: the loop the "ONNX unbatched serial" baseline runs (tools/gen_bench);
* cached @1 / uncached @1: the engine (`Generator.submit`), one request at a time, with the
  worker's cached head (worker/model.py) and without any cache;
* cached @C / uncached @C: every request submitted at once (batched prefills and decode steps).

Per way: the requests whose tokens equal the reference's, whose first token does, and the mean
length of the common prefix. fp32 engines are exact by construction (tests/unit/test_generation.py);
int8 ones quantize each call's activations by their range, so the batch and the cached head both
can change a token. No server; nothing here is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recgen.config import WorkerConfig
from recgen.core.formats import LLM_DIR
from tools.text_eval.cases import CASES_FILE, Case, load_cases
from tools.text_eval.rank import shown_cases
from worker.explain import TextOptions, plan_text
from worker.llm.api import GenerationHandle, StopReason
from worker.llm.engine import Generator
from worker.metrics import Metrics
from worker.model import LoadedModel


def _agreement(ref: Sequence[list[int]], got: Sequence[list[int]]) -> dict[str, Any]:
    def common(a: list[int], b: list[int]) -> int:
        n = 0
        for x, y in zip(a, b, strict=False):
            if x != y:
                break
            n += 1
        return n

    n = len(ref)
    return {
        "identical": sum(a == b for a, b in zip(ref, got, strict=True)),
        "first_token_equal": sum(a[:1] == b[:1] for a, b in zip(ref, got, strict=True)),
        "mean_common_prefix": round(sum(common(a, b) for a, b in zip(ref, got, strict=True)) / max(n, 1), 2),
        "n": n,
    }


async def _engine(gen: Generator, prompts: Sequence[str], max_new: int, concurrent: bool) -> list[list[int]]:
    async def one(h: GenerationHandle) -> list[int]:
        _text, fin = await h.result()
        assert fin.reason in (StopReason.EOS, StopReason.LENGTH), fin  # an engine error is no answer
        return list(h.token_ids)

    if concurrent:
        return list(await asyncio.gather(*(one(gen.submit(p, max_new_tokens=max_new)) for p in prompts)))
    return [await one(gen.submit(p, max_new_tokens=max_new)) for p in prompts]


def measure(
    models: Path, version: str | None, cases: Sequence[Case], max_new: int, threads: int
) -> dict[str, Any]:
    wcfg = WorkerConfig(threads=threads, max_seqs=max(len(cases), 1))
    model = LoadedModel.load(models, version, wcfg, Metrics())
    assert model.llm is not None, f"model version {model.name} has no language model"
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    plain = Generator(
        model.version.path / LLM_DIR,
        threads=threads,
        max_seqs=wcfg.max_seqs,
        allow_spinning=False,
        cache_prefix=False,
    )
    try:
        model.warmup()
        plain.start()
        prompts = [
            plan_text(model, s.history_rows, s.rec_rows, s.case.intent, s.case.locale, TextOptions()).prompt
            for s in shown_cases(model, cases)
        ]
        ref = [model.llm.generate_alone(p, max_new)[0] for p in prompts]
        ways = {}
        for name, gen in (("cached", model.llm), ("uncached", plain)):
            for label, concurrent in (("1", False), (str(len(prompts)), True)):
                got = asyncio.run(_engine(gen, prompts, max_new, concurrent))
                ways[f"{name} @{label}"] = _agreement(ref, got)
        return {
            "version": model.name,
            "precision": (model.llm_cfg or {}).get("precision"),
            "cached_prefix_tokens": len(model.llm.model.prefix),
            "max_new_tokens": max_new,
            "ways": ways,
            "seconds": round(time.perf_counter() - t0, 1),
            "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
        }
    finally:
        plain.stop()
        model.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    p = argparse.ArgumentParser(
        prog="python -m tools.text_eval.exactness", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--models", default="models")
    p.add_argument("--version", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="", help="write the result here too")
    args = p.parse_args(argv)
    cases = load_cases(CASES_FILE, args.limit)
    result = measure(Path(args.models), args.version, cases, args.max_new_tokens, args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
