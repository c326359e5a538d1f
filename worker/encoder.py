"""The content text encoder on the serving path (ONNX Runtime, no torch).

Reads the folder `export.encoder.export_encoder` writes (``model.onnx``,
``tokenizer.json``, ``encoder.json``) and turns texts into the same unit
vectors sentence-transformers would: token embeddings from the ONNX graph,
mean-pooled over the attention mask, L2-normalised. Used for items added at
run time (their embedding goes through the content map to a stand-in factor)
and for free-text intent.

Imports onnxruntime, numpy and tokenizers only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from recgen.core.formats import (
    ENCODER_CONFIG_FILE,
    ENCODER_FORMAT,
    ENCODER_MODEL_FILE,
    ENCODER_TOKENIZER_FILE,
)
from worker.onnx_session import DeviceUnavailable, session_options

LOG = logging.getLogger(__name__)

# The inputs this encoder knows how to feed. A graph asking for anything else
# was exported from a model this code does not understand.
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class EncoderError(Exception):
    """The encoder folder is missing, inconsistent, or the graph wants unknown inputs."""


def _read_config(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EncoderError(f"cannot read {path}: {e}") from e
    if cfg.get("format") != ENCODER_FORMAT:
        raise EncoderError(f"{path}: format {cfg.get('format')!r}, this recgen reads {ENCODER_FORMAT}")
    if cfg.get("pooling") != "mean":
        raise EncoderError(f"{path}: pooling {cfg.get('pooling')!r} unsupported (only 'mean')")
    for key in ("dim", "max_length", "input_names"):
        if key not in cfg:
            raise EncoderError(f"{path}: missing key {key!r}")
    return cfg


class TextEncoder:
    """Batched text → (n, dim) float32 unit vectors through one ORT session."""

    def __init__(
        self,
        dir: Path,
        *,
        threads: int,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self.dir = Path(dir)
        for name in (ENCODER_MODEL_FILE, ENCODER_TOKENIZER_FILE, ENCODER_CONFIG_FILE):
            if not (self.dir / name).is_file():
                raise EncoderError(f"encoder folder {self.dir} lacks {name}")
        self.config = _read_config(self.dir / ENCODER_CONFIG_FILE)
        self.dim = int(self.config["dim"])
        self.max_length = int(self.config["max_length"])
        self.normalize = bool(self.config.get("normalize", True))

        self.tokenizer = Tokenizer.from_file(str(self.dir / ENCODER_TOKENIZER_FILE))
        # We pad each batch ourselves (to its longest text, after sorting by
        # length); a padding setting left in tokenizer.json would pad every
        # text to a fixed width and waste most of the compute on [PAD].
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        pad = self.config.get("pad_id", self.tokenizer.token_to_id("[PAD]"))
        self.pad_id = int(pad) if pad is not None else 0

        # Explicit threads (intra = threads, inter = 1), never ORT's defaults:
        # several workers share the cores, and default pools collapse under
        # contention. 0 means "all cores", as the worker's --threads does.
        threads = threads if threads > 0 else (os.cpu_count() or 1)
        providers = list(providers) or ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(
            str(self.dir / ENCODER_MODEL_FILE), sess_options=session_options(threads), providers=providers
        )
        if providers[0] != "CPUExecutionProvider" and self.session.get_providers()[0] != providers[0]:
            # ONNX Runtime falls back to CPU silently; the worker must know.
            raise DeviceUnavailable(
                f"{self.dir / ENCODER_MODEL_FILE}: {providers[0]} did not load "
                f"(session providers: {self.session.get_providers()})"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self.input_names if n not in _KNOWN_INPUTS]
        if unknown:
            raise EncoderError(
                f"{self.dir / ENCODER_MODEL_FILE} wants inputs {unknown} that this encoder cannot feed "
                f"(it feeds {list(_KNOWN_INPUTS)})"
            )
        for need in ("input_ids", "attention_mask"):
            if need not in self.input_names:
                raise EncoderError(f"{self.dir / ENCODER_MODEL_FILE} has no {need!r} input")
        if sorted(self.input_names) != sorted(self.config["input_names"]):
            raise EncoderError(
                f"{self.dir}: graph inputs {self.input_names} differ from encoder.json "
                f"{self.config['input_names']}"
            )
        outputs = {o.name: o for o in self.session.get_outputs()}
        want = self.config.get("output_name") or self.session.get_outputs()[0].name
        if want not in outputs:
            raise EncoderError(f"{self.dir / ENCODER_MODEL_FILE} has no output {want!r} ({list(outputs)})")
        out = outputs[want]
        self.output_name = out.name
        if len(out.shape) != 3 or out.shape[-1] != self.dim:
            raise EncoderError(
                f"{self.dir / ENCODER_MODEL_FILE}: output {out.name} has shape {out.shape}, "
                f"expected token embeddings [batch, seq, {self.dim}]"
            )
        # Input dtypes come from the graph (int64 for optimum exports).
        self._dtypes = {
            i.name: np.int32 if i.type == "tensor(int32)" else np.int64 for i in self.session.get_inputs()
        }
        LOG.info(
            "text encoder loaded from %s: dim %d, max_length %d, %d threads, %s",
            self.dir,
            self.dim,
            self.max_length,
            threads,
            self.session.get_providers(),
        )

    def _run(self, encodings: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for r, e in enumerate(encodings):
            ids[r, : len(e.ids)] = e.ids
            mask[r, : len(e.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            # One segment per text: BERT's sentence A everywhere.
            feeds["token_type_ids"] = np.zeros_like(ids)
        feeds = {n: feeds[n].astype(self._dtypes[n], copy=False) for n in self.input_names}
        tokens = self.session.run([self.output_name], feeds)[0]
        m = mask[:, :, None].astype(np.float32)
        pooled = (tokens * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return pooled.astype(np.float32, copy=False)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32; row i embeds texts[i]."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] is {type(t).__name__}, not str")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts, add_special_tokens=True)
        # Longest first, so each batch pads only to its own longest text.
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            out[rows] = self._run([encodings[i] for i in rows])
        if self.normalize:
            # As torch.nn.functional.normalize(eps=1e-12), what sentence-transformers uses.
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
