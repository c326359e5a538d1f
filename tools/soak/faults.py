"""The soak's two events: one hot swap of the model version and one worker SIGKILL.

    copy_repository(src, dst)                # a private model repository (hard links where possible)
    info = await hot_swap(root)              # a new version (the serving one's files), then `recgen reload`
    info = await kill_worker(gateway)        # SIGKILL one worker, wait for the gateway's replacement

Both return what happened as a dict for the report; neither judges it. The new version has the
serving one's files and quality figures, so the promotion gate lets it through and the swap
itself, not a different model, is what the samples show.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from recgen.repository import MANIFEST, ModelRepository, VersionWriter, new_version_name
from tools.harness.procs import ROOT, Gateway, env


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the versions are never modified in place (writers rename into place)
    except OSError:
        shutil.copy2(src, dst)


def copy_repository(src: Path, dst: Path) -> Path:
    """A copy of model repository `src` at `dst` that the swap can write into."""
    shutil.copytree(src, dst, copy_function=_link_or_copy)
    return dst


def derive_version(root: Path) -> str:
    """A new complete version with the serving version's files and manifest figures."""
    src = ModelRepository(root).open(ModelRepository(root).serving(), verify=False)
    with VersionWriter(root, new_version_name()) as w:
        for p in src.path.iterdir():
            if p.name == MANIFEST:
                continue
            if p.is_dir():
                shutil.copytree(p, w.path / p.name, copy_function=_link_or_copy)
            else:
                _link_or_copy(str(p), str(w.path / p.name))
        w.commit(dataclasses.replace(src.manifest, files={}))
        return w.version


def _reload(root: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recgen.cli", "reload", "--models", str(root), "--version", version],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def hot_swap(root: Path, t: float) -> dict[str, Any]:
    t0 = time.monotonic()
    old = ModelRepository(root).serving()
    new = await asyncio.to_thread(derive_version, root)
    r = await asyncio.to_thread(_reload, root, new)
    return {
        "t": round(t, 1),
        "from_version": old,
        "to_version": new,
        "reload_rc": r.returncode,
        "reload_stderr": r.stderr[-500:],
        "took_s": round(time.monotonic() - t0, 2),
    }


async def kill_worker(gateway: Gateway, t: float, limit_s: float = 120.0) -> dict[str, Any]:
    """SIGKILL the first worker; then until the gateway has as many workers as before again."""
    before = gateway.worker_pids()
    assert before, "the gateway has no worker to kill"
    victim = before[0]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    replacement = None
    while time.monotonic() - t0 < limit_s:
        await asyncio.sleep(0.2)
        now = gateway.worker_pids()
        new = [p for p in now if p not in before]
        if new and len(now) >= len(before):
            replacement = new[0]
            break
    return {
        "t": round(t, 1),
        "victim_pid": victim,
        "replacement_pid": replacement,
        "respawned_s": None if replacement is None else round(time.monotonic() - t0, 2),
    }
