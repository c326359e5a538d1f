"""File-format versions, file names and index kinds of a model version's parts.

The writer (export/) and the reader (worker/) both import them from here,
so neither owns the format: a change is one edit, and a version written by
one release is checked against the same number by the other.

Layout of `<version>/` (recgen.repository adds manifest.json and catalog.jsonl):

    item_factors.npy        (n_items, d) float32 MF item factors, catalog row order
    item_popularity.npy     (n_items,) float32 interaction counts
    scorer.onnx             scores = user_vectors · item_vectors (export/scorer_onnx.py)
    items.faiss             the retrieval index, of the kind params["index"]["kind"] names
    encoder/                text encoder (encoder.json, model.onnx, tokenizer.json)
                            and its content map (recgen/core/content_map.py)
    context/                context.json and the time lift tables
    llm/                    llm.json, model.onnx, tokenizer.json
    users/                  training users' histories (recgen/core/user_history.py)

Parts whose format one core module both writes and reads keep their names
there: the content map (`recgen.core.content_map`) and users/
(`recgen.core.user_history`). This module holds names and numbers only.
"""

from __future__ import annotations

# ---------------------------------------------------------------- the version's top level

ITEM_FACTORS_FILE = "item_factors.npy"  # (n_items, d) float32
ITEM_POPULARITY_FILE = "item_popularity.npy"  # (n_items,) float32
SCORER_FILE = "scorer.onnx"
INDEX_FILE = "items.faiss"

# Index kinds, the manifest's params["index"]["kind"] (export/index.py chooses one,
# worker/retrieval.py loads each).
INDEX_FLAT = "flat"  # exact inner-product search (IndexFlatIP)
INDEX_NORM_BOUNDED = "norm_bounded"  # exact; items.faiss is the IndexFlatIP over every item
INDEX_HNSW = "hnsw"  # HNSW over items lifted to d + 1 dimensions (recgen.core.index_types)

# ---------------------------------------------------------------- encoder/

ENCODER_DIR = "encoder"
ENCODER_FORMAT = 1
"""`encoder/encoder.json` "format": pooling, dim, max_length, input names."""
ENCODER_CONFIG_FILE = "encoder.json"
ENCODER_MODEL_FILE = "model.onnx"  # token embeddings (batch, seq, dim)
ENCODER_TOKENIZER_FILE = "tokenizer.json"

# ---------------------------------------------------------------- context/

CONTEXT_DIR = "context"
CONTEXT_FORMAT = 1
"""`context/context.json` "format": learned weights per user kind and feature."""
CONTEXT_FILE = "context.json"
HOUR_LIFT_FILE = "hour_lift.npy"  # (n_items, HOUR_BUCKETS) float32
WEEKEND_LIFT_FILE = "weekend_lift.npy"  # (n_items, 2) float32: [weekday, weekend]

# ---------------------------------------------------------------- llm/

LLM_DIR = "llm"
LLM_FORMAT = 1
"""`<version>/llm/llm.json` "format": the exported decoder, tokenizer and prompt template."""
LLM_CONFIG_FILE = "llm.json"
LLM_MODEL_FILE = "model.onnx"  # one file, no external data
LLM_TOKENIZER_FILE = "tokenizer.json"
