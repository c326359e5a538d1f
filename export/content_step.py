"""The export pipeline's content step: text encoder + map into MF item space.

Exports the packaged MiniLM encoder to ONNX, embeds every catalog item's
text ("Title (year). Genres: A, B. <text>") with the same runtime encoder the
worker uses, and fits the ridge map from embeddings to MF item factors on
items with interactions, so an item known only by its text can be placed
among the others (cold items, live catalog updates).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.content_map import fit_content_map
from export.data import Dataset
from export.encoder import export_encoder
from recgen.repository import item_text
from worker.encoder import TextEncoder

LOG = logging.getLogger(__name__)


def export_content(ds: Dataset, factors: np.ndarray, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    info = export_encoder(out_dir, progress=progress)
    encoder = TextEncoder(out_dir, threads=2)
    emb = encoder.encode([item_text(it) for it in ds.items])
    counts = np.bincount(ds.item, minlength=ds.n_items).astype(np.float64)
    # Items with few interactions have noisy factors: leave them out of the fit
    # (weight 0) and trust the rest by log count (held-out cosine 0.38 vs 0.36).
    weights = np.where(counts >= 5, np.log1p(counts), 0.0)
    w_map, report = fit_content_map(emb, factors, weights=weights)
    np.save(out_dir / "content_map.npy", w_map.astype(np.float32))
    LOG.info("content map: %s", {k: v for k, v in report.items() if not isinstance(v, list)})
    # "embeddings" (n, dim): reused by the context step (export/context.py), never saved.
    return {"dim": int(emb.shape[1]), "report": report, "encoder": info, "embeddings": emb}
