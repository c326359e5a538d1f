"""Derive model versions from a real exported one, for swap and promotion tests.

`derive` copies every file of a version into a new one through VersionWriter
(so the new version is complete, checksummed and atomically visible like an
export's), optionally changing item popularity (so cold-start answers tell the
versions apart) and the recorded held-out HR@10 (what the quality gate reads).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from recgen.repository import MANIFEST, ModelRepository, VersionWriter


def derive(
    root: Path,
    name: str,
    *,
    source: str | None = None,
    hit_rate_scale: float = 1.0,
    reverse_popularity: bool = False,
) -> str:
    src = ModelRepository(root).open(source, verify=False)
    with VersionWriter(root, name) as w:
        for p in src.path.iterdir():
            if p.name == MANIFEST:
                continue
            if p.is_dir():
                shutil.copytree(p, w.path / p.name)
            else:
                shutil.copy2(p, w.path / p.name)
        if reverse_popularity:
            pop = np.load(w.path / "item_popularity.npy")
            np.save(w.path / "item_popularity.npy", (pop.max() - pop + 1).astype(pop.dtype))
        m = src.manifest
        metrics = {
            **m.metrics,
            "quality": {k: dict(v) if isinstance(v, dict) else v for k, v in m.metrics["quality"].items()},
        }
        metrics["quality"]["mf"]["hit_rate@10"] = m.metrics["quality"]["mf"]["hit_rate@10"] * hit_rate_scale
        m2 = type(m)(
            version=name,
            created_at=m.created_at,
            dataset=m.dataset,
            dims=m.dims,
            metrics=metrics,
            params=m.params,
        )
        w.commit(m2)
    return name
