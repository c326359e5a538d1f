"""The ONNX scorer: one call scores every candidate of every user in a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worker.onnx_session import OnnxModel


class Scorer:
    def __init__(self, path: Path, *, threads: int, providers: list[str]) -> None:
        self.model = OnnxModel(path, threads=threads, providers=providers)

    def score(self, user_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
        """(B, d), (B, C, d) -> (B, C)."""
        (scores,) = self.model.run({"user_vectors": user_vectors, "item_vectors": item_vectors})
        return scores
