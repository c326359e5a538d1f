"""Which model version serves: promotion behind a quality gate, rollback, retention.

Workers follow the repository's SERVING pointer (`ModelRepository.serving`)
and swap to the version it names. Only this module moves the pointer:

- `promote` points it at a version whose recorded held-out quality is not
  worse than the serving version's beyond a tolerance (or when forced), and
  pushes the replaced version onto the pointer's `previous` list;
- `rollback` points it back at the previous version;
- `prune` deletes versions beyond a retention count, never the serving one
  nor the ones a rollback can return to.

The pointer is replaced atomically (write, fsync, rename, fsync the
directory), so a reader sees the old pointer or the new one, never half.
The gate compares the MF model's HR@10 from each manifest (temporal
leave-last-one-out on that version's own data): with feedback folded in the
data grows, so the numbers compare models trained as the service is run,
not on one fixed test set; the tolerance absorbs that noise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recgen.repository import MANIFEST, SERVING, ModelRepository, RepositoryError, _fsync_dir

LOG = logging.getLogger(__name__)

GATE_METRIC = ("mf", "hit_rate@10")
DEFAULT_TOLERANCE = 0.05  # relative: the new HR@10 may be up to 5 % below the serving one
DEFAULT_KEEP = 5
MAX_PREVIOUS = 10  # rollback depth the pointer remembers
# grpc.health.v1 service name a worker (and the gateway, for all its workers) reports: SERVING
# while it serves the version SERVING names, NOT_SERVING after refusing that version (a load or
# checksum failure) and keeping an older one. The worker's "" status stays SERVING meanwhile.
POINTER_HEALTH_SERVICE = "recgen.v1.ServingPointer"


class GateRefused(Exception):
    """The candidate's recorded quality is worse than the serving version's beyond the tolerance."""


@dataclass
class Decision:
    version: str
    previous: str | None
    promoted: bool
    reason: str
    candidate_quality: float | None = None
    serving_quality: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def quality(repo: ModelRepository, version: str) -> float | None:
    """The gate metric recorded in a version's manifest (None if it has none)."""
    try:
        m = json.loads((repo.root / version / MANIFEST).read_text())
        return float(m["metrics"]["quality"][GATE_METRIC[0]][GATE_METRIC[1]])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_pointer(root: Path) -> dict[str, Any]:
    p = root / SERVING
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text())
        return d if isinstance(d, dict) else {}
    except ValueError as e:
        raise RepositoryError(f"{p} is unreadable: {e}") from e


def _write_pointer(root: Path, version: str, previous: list[str]) -> None:
    tmp = root / f".{SERVING}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"version": version, "previous": previous[:MAX_PREVIOUS]}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / SERVING)
    _fsync_dir(root)


def serving_state(root: Path | str) -> tuple[str, list[str]]:
    """(serving version, previous versions newest first)."""
    repo = ModelRepository(root)
    d = _read_pointer(repo.root)
    return repo.serving(), [str(v) for v in d.get("previous", [])]


def promote(
    root: Path | str,
    version: str | None = None,
    *,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Decision:
    """Point SERVING at `version` (default: the newest) if it passes the gate.

    Raises GateRefused when it does not (nothing changes), RepositoryError
    when the version is not complete."""
    repo = ModelRepository(root)
    candidate = version or repo.latest()
    if not (repo.root / candidate / MANIFEST).is_file():
        raise RepositoryError(f"model version {candidate} is missing or incomplete in {repo.root}")
    d = _read_pointer(repo.root)
    current = str(d["version"]) if "version" in d else None
    if current is not None and not (repo.root / current / MANIFEST).is_file():
        current = None  # the pointer's version was removed by hand: nothing to compare with
    previous = [str(v) for v in d.get("previous", [])]
    q_new = quality(repo, candidate)
    q_old = quality(repo, current) if current else None
    if current == candidate:
        return Decision(candidate, previous[0] if previous else None, False, "already serving", q_new, q_old)
    reason = "first promotion" if current is None else "quality within tolerance"
    if current is not None and not force:
        if q_new is None:
            raise GateRefused(f"{candidate} records no {GATE_METRIC[1]}: promote with --force")
        if q_old is not None and q_new < q_old * (1.0 - tolerance):
            raise GateRefused(
                f"{candidate} {GATE_METRIC[1]} {q_new:.4f} is worse than serving {current}'s "
                f"{q_old:.4f} beyond the tolerance of {tolerance:.0%}"
            )
    elif force and current is not None:
        reason = "forced"
    if current is not None:
        previous = [current, *[v for v in previous if v not in (current, candidate)]]
    _write_pointer(repo.root, candidate, previous)
    LOG.info("SERVING -> %s (was %s): %s", candidate, current, reason)
    return Decision(candidate, current, True, reason, q_new, q_old)


def pin(root: Path | str) -> None:
    """Write the SERVING pointer where a repository has versions but no pointer yet, naming
    the newest: from then on a new version serves only through `promote` and its gate."""
    repo = ModelRepository(root)
    if repo.versions() and not (repo.root / SERVING).is_file():
        _write_pointer(repo.root, repo.latest(), [])
        LOG.info("SERVING pinned to %s", repo.latest())


def rollback(root: Path | str) -> Decision:
    """Point SERVING back at the previous version (no gate: it served before)."""
    repo = ModelRepository(root)
    d = _read_pointer(repo.root)
    current = str(d.get("version", "")) or None
    previous = [str(v) for v in d.get("previous", []) if (repo.root / str(v) / MANIFEST).is_file()]
    if current is None or not previous:
        raise RepositoryError(f"nothing to roll back to in {repo.root}")
    target, rest = previous[0], previous[1:]
    _write_pointer(repo.root, target, rest)
    LOG.info("SERVING -> %s (rolled back from %s)", target, current)
    return Decision(target, current, True, "rollback", quality(repo, target), quality(repo, current))


def prune(root: Path | str, keep: int = DEFAULT_KEEP) -> list[str]:
    """Delete complete versions beyond the `keep` newest; never the serving one or
    its rollback targets. Returns the versions deleted."""
    repo = ModelRepository(root)
    versions = repo.versions()
    if not versions:
        return []
    serving, previous = serving_state(repo.root)
    protected = {serving, *previous, *versions[-max(keep, 1) :]}
    removed = []
    for v in versions:
        if v in protected:
            continue
        # Rename first so no reader ever sees a version half deleted.
        trash = repo.root / f".deleting-{v}"
        os.replace(repo.root / v, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(v)
    if removed:
        LOG.info("pruned %d old model versions: %s", len(removed), ", ".join(removed))
    return removed
