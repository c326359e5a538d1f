"""Explanation text quality per arm and precision (`make text-eval`); see tools/text_eval/__init__.py.

The command line: parse the flags, run the evaluation in process, print the table and the goals,
write the JSON and the markdown report.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from tools.text_eval.arms import ARMS, DEFAULT_ARM, DEFAULT_ARMS
from tools.text_eval.cases import CASES_FILE, load_cases
from tools.text_eval.report import goals, markdown, table
from tools.text_eval.run import Config, evaluate

QUICK_CASES = 20
QUICK_CONCURRENCY = 8


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.text_eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="models", help="model repository (a version with an LLM)")
    p.add_argument("--version", default=None, help="version to evaluate (default: the current one)")
    p.add_argument("--cases", default=str(CASES_FILE))
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N cases only")
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma-separated, of {', '.join(ARMS)}")
    p.add_argument("--concurrency", type=int, default=32, help="clients of the scored pass")
    p.add_argument("--c1-requests", type=int, default=8, help="texts timed at concurrency 1")
    p.add_argument("--max-new-tokens", type=int, default=Config.max_new_tokens)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    p.add_argument(
        "--quick", action="store_true", help=f"{QUICK_CASES} cases, concurrency 1 and {QUICK_CONCURRENCY}"
    )
    p.add_argument(
        "--compare",
        metavar="DIR[@VERSION]",
        help="also measure this version (default arm) in the same run, e.g. a fine-tuned export",
    )
    p.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="prefill every prompt whole (the worker caches the outline prompts' shared head)",
    )
    p.add_argument(
        "--exactness",
        action="store_true",
        help="also measure how often the engine's greedy tokens differ from the unbatched reference "
        "(tools/text_eval/exactness.py; several minutes)",
    )
    p.add_argument("--json", default="docs/text.json", help="'' for none")
    p.add_argument("--md", default="docs/text.md", help="'' for none")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = build_parser().parse_args(argv)
    arms = tuple(a for a in args.arms.split(",") if a)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        print(f"python -m tools.text_eval: unknown arm {unknown}; known: {', '.join(ARMS)}")
        return 2
    limit = args.limit if args.limit is not None else (QUICK_CASES if args.quick else None)
    cases = load_cases(Path(args.cases), limit)
    cfg = Config(
        arms=arms,
        concurrency=QUICK_CONCURRENCY if args.quick else args.concurrency,
        c1_requests=min(args.c1_requests, 4 if args.quick else args.c1_requests, len(cases)),
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        prefix_cache=not args.no_prefix_cache,
    )
    result = evaluate(Path(args.models), args.version, cases, cfg)
    if args.compare:
        root, _, version = args.compare.partition("@")
        other = evaluate(Path(root), version or None, cases, replace(cfg, arms=(DEFAULT_ARM,)))
        for row in other["rows"]:
            row["arm"] = f"{DEFAULT_ARM} @ {other['version']}"
        result["rows"] += other["rows"]
        result["compared"] = {k: other[k] for k in ("version", "llm_source", "seconds", "loadavg")}
    if args.exactness:
        from tools.text_eval.exactness import measure

        result["exactness"] = measure(Path(args.models), args.version, cases, 16, args.threads)
    command = "python -m tools.text_eval " + shlex.join(argv if argv is not None else sys.argv[1:])
    result["command"] = command
    print(table(result))
    for g in goals(result):
        mark = "met   " if g["met"] else "MISSED"
        print(f"{mark}  {g['goal']}: {g['value']}  ({g['arm']}, {g['precision']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
