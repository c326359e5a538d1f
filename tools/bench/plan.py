"""The sizes of one bench run (Plan: full, --quick or --smoke) and the environment its subprocesses
run in; no measuring."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tools.bench.growth import FULL, SMOKE, Sizes
from tools.harness.procs import ROOT, env, run_module

# The growth phase of `--quick` (~40 s on 2 cores): 100x the users and the items, not the full
# run's 1000x (1M items alone: ~4 min), nor growth --quick's 10x (12 s; too short a span to say much).
GROWTH_QUICK = Sizes((1_000, 100_000), (1_000, 100_000), calls=100, rounds=2)


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
    retrieval_universe: int = 1_000_000  # items the synthetic catalogs are drawn from
    retrieval_reference: bool = True  # also the forced measured-choice row where the policy picks exact
    rank_seconds: float = 6.0  # each closed loop of the rank-cost phase (3 rounds: ~2x one pass of 8 s)
    rank_rounds: int = 3  # interleaved rounds of echo and recgen loads; the figures are their medians
    rank_warmup: float = 1.0
    rank_idle_s: float = 2.0  # idle CPU measured before each of its loads
    rank_users: int = 200  # users with history it seeds and calls
    growth: Sizes = FULL  # the growth phase (tools.bench.growth): users and items series, calls
    smoke: bool = False

    @property
    def mode(self) -> str:
        return "smoke" if self.smoke else "quick" if self.quick else "full"

    @staticmethod
    def make(quick: bool, threads: int, workers: int, smoke: bool = False) -> Plan:
        if smoke:
            return Plan.smoke_plan(threads, workers)
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
            rank_seconds=4.0,
            rank_rounds=2,
            growth=GROWTH_QUICK,
        )

    @staticmethod
    def smoke_plan(threads: int, workers: int) -> Plan:
        """Every phase at its smallest size that still gives every ratio a value (CI: 1-2 min on
        2 cores with a tiny model). Generation keeps concurrency 1 and 32 (the first-text ratios
        compare them); the loads are too short for the numbers to mean anything: no goal is judged."""
        return Plan(
            False,
            threads,
            workers,
            gen_levels=(1, 32),
            gen_duration=(3.0, 3.0),
            gen_warmup=(1.0, 1.0),
            gen_users=8,
            ort_prompts=3,
            torch_prompts=2,
            # The baselines decode 8 tokens, not the server's 48: PyTorch's first generate alone takes
            # ~15 s on a busy 2-core machine. Their tokens/s still has a value, with no meaning.
            max_new_tokens=8,
            rec_concurrency=(8,),
            rec_duration=2.0,
            rec_warmup=0.5,
            retrieval_sizes=(20_000,),
            retrieval_universe=20_000,
            retrieval_reference=False,
            als_users=4_000,
            als_iterations=2,
            queries=100,
            rank_seconds=1.0,
            rank_warmup=0.25,
            rank_idle_s=0.25,
            rank_users=32,
            rank_rounds=1,
            growth=SMOKE,
            smoke=True,
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
