"""The sizes of one chaos run (Plan), where its files go (WORKDIR) and how its gateways are
started (gateway); no scenario logic."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tools.harness.procs import Gateway

ROOT = Path(__file__).resolve().parents[2]
WORKDIR = ROOT / "var" / "chaos"  # state files, gateway logs; emptied at the start of a run


@dataclass
class Plan:
    """Sizes of one run; --quick shrinks the durations and the cycles."""

    quick: bool = False
    workdir: str = str(WORKDIR)  # state files and logs (--workdir); a str so that the JSON holds it
    rate: float = 30.0  # steady load for the worker faults, requests/s (open loop)
    explain_share: float = 0.05  # of that load
    timeout: float = 5.0  # caller's deadline, plain Recommend and SendFeedback
    text_timeout: float = 15.0  # caller's deadline, Recommend(explain=true)
    warm_s: float = 5.0  # load before the fault
    tail_s: float = 5.0  # load after capacity is back
    recovery_limit_s: float = 90.0  # give up waiting for a restart after this
    users: int = 200
    seeded_users: int = 50  # users given a history before the load (fold-in runs for them)
    cycles: int = 8  # gateway SIGKILL cycles
    cycle_load_s: tuple[float, float] = (0.3, 2.5)  # kill after a random time in this range
    feedback_clients: int = 32
    max_events: int = 20000  # all cycles together
    sustain_s: float = 15.0  # closed loop at concurrency 8 that finds the sustainable rate
    overload_s: float = 20.0
    overload_factor: float = 5.0
    max_in_flight: int = 16
    explain_heavy: float = 0.5  # explain share of the overload mix
    burst: int = 1000  # deadline scenario: concurrent Rank calls straight to one worker
    burst_deadline_s: float = 0.2
    short_text_deadline_s: float = 0.25
    short_text_requests: int = 60

    @property
    def dir(self) -> Path:
        return Path(self.workdir)

    @classmethod
    def make(cls, quick: bool, workdir: Path = WORKDIR) -> Plan:
        if not quick:
            return cls(workdir=str(workdir))
        return cls(
            quick=True,
            workdir=str(workdir),
            warm_s=3.0,
            tail_s=3.0,
            cycles=5,
            cycle_load_s=(0.3, 1.5),
            max_events=8000,
            sustain_s=8.0,
            overload_s=10.0,
            short_text_requests=40,
        )


def gateway(plan: Plan, models: Path, state: str, name: str, *args: str) -> Gateway:
    """A chaos gateway (not started): 127.0.0.1, kernel-chosen ports, metrics on, its state file
    `state` and its logs in the plan's workdir."""
    return Gateway(
        models, plan.dir / state, *args, name=name, host="127.0.0.1", metrics=True, log_dir=plan.dir
    )
