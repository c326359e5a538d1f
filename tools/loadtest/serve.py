"""`python -m tools.loadtest --serve MODELS`: the recgen gateway under test, started for the run
and always stopped after it (tools.harness.procs.Gateway: 127.0.0.1, a kernel-chosen port).

`make loadtest` uses this instead of a backgrounded `recgen serve` in its recipe, so the gateway's
life is one Python `with` block rather than a shell trap across recipe lines. This module does not
measure anything; it only owns the process and its throwaway state file.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tools.harness.procs import Gateway


@contextlib.contextmanager
def served(models: str, workers: int, state: str | None = None) -> Iterator[str]:
    """Yield the HOST:PORT of a ready `recgen serve --models MODELS --workers N`; the state is a
    fresh SQLite file in a temporary directory unless `state` names one."""
    with tempfile.TemporaryDirectory(prefix="recgen-loadtest-") as tmp:
        db = Path(state) if state else Path(tmp) / "loadtest.db"
        with Gateway(Path(models).resolve(), db, "--workers", str(workers), host="127.0.0.1") as gw:
            yield gw.target
