"""The sizes of one bench run (Plan) and the environment its subprocesses run in; no measuring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tools.harness.procs import ROOT, env, run_module


@dataclass(frozen=True)
class Plan:
    quick: bool
    threads: int
    workers: int
    gen_levels: tuple[int, ...] = (1, 8, 32)
    gen_duration: tuple[float, ...] = (30.0, 30.0, 40.0)
    gen_warmup: tuple[float, ...] = (3.0, 5.0, 10.0)
    gen_users: int = 64
    ort_prompts: int = 24
    torch_prompts: int = 12
    max_new_tokens: int = 48  # the server's default (recgen serve --max-new-tokens)
    rec_concurrency: tuple[int, ...] = (8, 32)
    rec_duration: float = 10.0
    rec_warmup: float = 2.0
    retrieval_sizes: tuple[int, ...] = (100_000, 1_000_000)
    als_users: int = 50_000
    als_iterations: int = 6
    queries: int = 1000

    @staticmethod
    def make(quick: bool, threads: int, workers: int) -> Plan:
        if not quick:
            return Plan(False, threads, workers)
        return Plan(
            True,
            threads,
            workers,
            gen_duration=(10.0, 10.0, 15.0),
            gen_warmup=(2.0, 3.0, 6.0),
            gen_users=32,
            ort_prompts=8,
            torch_prompts=4,
            rec_duration=5.0,
            rec_warmup=1.0,
            retrieval_sizes=(100_000,),
            als_users=20_000,
            als_iterations=4,
            queries=500,
        )


def sub_env(threads: int, root: Path = ROOT) -> dict[str, str]:
    """The environment of a server, load generator or baseline: `threads` BLAS/OpenMP threads,
    Hugging Face offline unless the caller's environment says otherwise."""
    e = env(root, threads)
    e.setdefault("HF_HUB_OFFLINE", "1")
    e.setdefault("TRANSFORMERS_OFFLINE", "1")
    return e


def run_py(args: list[str], *, threads: int, timeout: float, log: Path) -> None:
    """python -m ... in its own process (own memory, own thread pools); output to `log`."""
    run_module(args, log=log, timeout=timeout, environ=sub_env(threads))
