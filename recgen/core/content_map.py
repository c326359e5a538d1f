"""Map content-text embeddings into the MF item-factor space (serving side).

A new item has no interactions, so ALS has no factor for it; its text
embedding, pushed through a linear map fitted offline
(`export.content_map.fit_content_map`), gives a stand-in factor that the
scorer and the FAISS index can use like any other. The map is stored as one
float32 matrix ``W`` of shape ``(dim + 1, d)``: the last row is the bias.

A ridge regression shrinks towards the mean, so mapped vectors come out with
smaller norms than trained factors (about 60 % of the median on
MovieLens-100K) and lose to trained items on inner product whatever their
direction: held-out "new" items got 1 % of the top-10 slots for 9 % of the
interactions (tools/new_items.py). Export therefore also fits one scale on
held-out trained items, chosen so that their mapped vectors reach users'
top-k as often as their true factors do, and stores it beside the map
(``content_calibration.json``). Matching the norm distribution instead
overshoots (new items take 40 % of the slots), because mapped vectors point
near the mean factor, which most users like. A version without the file
serves the raw mapped vectors, as before.

numpy only: the worker imports this, and the worker never imports torch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)

CONTENT_MAP_FILE = "content_map.npy"  # in the version's encoder/ folder (recgen.core.formats.ENCODER_DIR)
CALIBRATION_FILE = "content_calibration.json"  # beside content_map.npy
CALIBRATION_KIND = "exposure_scale"


def apply_content_map(W: np.ndarray, emb: np.ndarray) -> np.ndarray:
    """Stand-in item factors ``emb @ W[:-1] + W[-1]``, float32, shape (n, d)."""
    W = np.asarray(W)
    emb = np.asarray(emb)
    if W.ndim != 2 or W.shape[0] < 2:
        raise ValueError(f"content map must be 2-D (dim + 1, d), got shape {W.shape}")
    if emb.ndim == 1:
        emb = emb[None, :]
    if emb.ndim != 2 or emb.shape[1] != W.shape[0] - 1:
        raise ValueError(
            f"embeddings of shape {emb.shape} do not fit a content map of shape {W.shape} "
            f"(expected (n, {W.shape[0] - 1}))"
        )
    out = emb.astype(np.float32, copy=False) @ W[:-1].astype(np.float32, copy=False)
    out += W[-1].astype(np.float32, copy=False)
    return out


def load_content_map(path: Path, *, dim: int | None = None, factors: int | None = None) -> np.ndarray:
    """Read a saved map and check it against the encoder and factor widths."""
    W = np.load(path, allow_pickle=False)
    if W.ndim != 2 or W.dtype != np.float32:
        raise ValueError(f"{path}: expected a 2-D float32 matrix, got {W.dtype} {W.shape}")
    if dim is not None and W.shape[0] != dim + 1:
        raise ValueError(f"{path}: {W.shape[0]} rows, encoder dim {dim} needs {dim + 1}")
    if factors is not None and W.shape[1] != factors:
        raise ValueError(f"{path}: {W.shape[1]} columns, item factors have {factors}")
    if not np.isfinite(W).all():
        raise ValueError(f"{path}: content map holds non-finite values")
    return W


@dataclass(frozen=True)
class ContentCalibration:
    """One factor that stand-in vectors are multiplied by (their direction unchanged).

    Fitted at export on held-out trained items so that their mapped vectors reach
    users' top-k as often as their true factors do (`export.content_map.fit_exposure_scale`).
    """

    scale: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"content calibration scale must be finite and positive, got {self.scale}")

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return (np.asarray(vectors, np.float32) * np.float32(self.scale)).astype(np.float32, copy=False)

    def to_json(self) -> dict[str, Any]:
        return {"kind": CALIBRATION_KIND, "scale": float(self.scale)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> ContentCalibration:
        if d.get("kind") != CALIBRATION_KIND:
            raise ValueError(f"unknown content calibration kind {d.get('kind')!r}")
        return ContentCalibration(float(d["scale"]))


def load_calibration(encoder_dir: Path) -> ContentCalibration | None:
    """The version's calibration, or None where it has none (versions exported before it)."""
    path = Path(encoder_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return ContentCalibration.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e


def map_content(W: np.ndarray, emb: np.ndarray, calibration: ContentCalibration | None = None) -> np.ndarray:
    """Stand-in item factors for text embeddings: the map, then the calibration if any."""
    out = apply_content_map(W, emb)
    return out if calibration is None else calibration.apply(out)
