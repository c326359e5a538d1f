"""Quality of an exported ONNX causal LM, measured with ONNX Runtime only.

Numpy + onnxruntime + tokenizers, no torch: what is measured here is exactly what
the worker will run. Two tools:

- `measure_llm_quality`: perplexity of each precision (fp32, int8, ...) on
  held-out catalog text, full-sequence logits (no KV cache), plus how often the
  other precisions agree with the first one on the next-token argmax.
- `greedy_generate_onnx`: a plain greedy loop with KV cache and left padding,
  the reference the worker's continuous batcher must match; the grounding-rate
  measurement (added later) can generate with it.

The graph conventions (inputs `input_ids`, `attention_mask`, optional
`position_ids`, `past_key_values.{i}.key|value`; outputs `logits`,
`present.{i}.key|value`) are those of optimum-onnx's text-generation-with-past.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)


def catalog_text(title: str, year: int | str | None, genres: Sequence[str]) -> str:
    """One held-out text per catalog item: "Title (year) is a Comedy|Drama film."

    The shape of the facts the model has to state correctly when it presents an
    item (title, year, genres), in plain prose.
    """
    year_part = f" ({year})" if year not in (None, "") else ""
    genre = "|".join(genres) if genres else "unclassified"
    article = "an" if genre[:1].lower() in "aeiou" else "a"
    return f"{title}{year_part} is {article} {genre} film."


# Used when the caller passes no catalog: well-known films (MovieLens-100K titles,
# written the usual way), so the perplexity still says something about movie text.
DEFAULT_QUALITY_TEXTS: tuple[str, ...] = tuple(
    catalog_text(t, y, g.split("|"))
    for t, y, g in [
        ("Toy Story", 1995, "Animation|Children's|Comedy"),
        ("Star Wars", 1977, "Action|Adventure|Romance|Sci-Fi|War"),
        ("Fargo", 1996, "Crime|Drama|Thriller"),
        ("The Godfather", 1972, "Action|Crime|Drama"),
        ("Pulp Fiction", 1994, "Crime|Drama"),
        ("Casablanca", 1942, "Drama|Romance|War"),
        ("The Silence of the Lambs", 1991, "Drama|Thriller"),
        ("Raiders of the Lost Ark", 1981, "Action|Adventure"),
        ("Back to the Future", 1985, "Comedy|Sci-Fi"),
        ("Titanic", 1997, "Action|Drama|Romance"),
        ("Schindler's List", 1993, "Drama|War"),
        ("The Usual Suspects", 1995, "Crime|Thriller"),
        ("Alien", 1979, "Action|Horror|Sci-Fi|Thriller"),
        ("Forrest Gump", 1994, "Comedy|Romance|War"),
        ("Groundhog Day", 1993, "Comedy|Romance"),
        ("Jurassic Park", 1993, "Action|Adventure|Sci-Fi"),
    ]
)


def make_session(model: Path | bytes, num_threads: int | None = None):
    """An ORT CPU session with explicit thread counts (defaults collapse under load).

    model: a .onnx path, or a serialized model (bytes).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def past_specs(session) -> list[tuple[str, int, int, np.dtype]]:
    """(name, kv_heads, head_dim, dtype) for every past_key_values input."""
    specs = []
    for inp in session.get_inputs():
        if inp.name.startswith("past_key_values."):
            _, heads, _, head_dim = inp.shape
            dtype = np.dtype(np.float16 if inp.type == "tensor(float16)" else np.float32)
            specs.append((inp.name, int(heads), int(head_dim), dtype))
    return specs


def position_ids_from_mask(mask: np.ndarray, seq_len: int) -> np.ndarray:
    # Same as transformers' generate: cumsum(mask) - 1, padded slots set to 1,
    # then the last `seq_len` columns (the tokens fed this step).
    pos = np.cumsum(mask, axis=1) - 1
    pos[mask == 0] = 1
    return pos[:, -seq_len:].astype(np.int64)


def forward_full(session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Logits [batch, seq, vocab] for whole sequences, with an empty KV cache."""
    batch = input_ids.shape[0]
    names = {i.name for i in session.get_inputs()}
    feed: dict[str, np.ndarray] = {
        "input_ids": input_ids.astype(np.int64),
        "attention_mask": attention_mask.astype(np.int64),
    }
    if "position_ids" in names:
        feed["position_ids"] = position_ids_from_mask(feed["attention_mask"], input_ids.shape[1])
    for name, heads, head_dim, dtype in past_specs(session):
        feed[name] = np.zeros((batch, heads, 0, head_dim), dtype=dtype)
    (logits,) = session.run(["logits"], feed)
    return logits


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _encode_texts(tokenizer_json: Path, texts: Sequence[str], bos_id: int | None) -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    out = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        # Condition on BOS where the model has one (it saw text after BOS in
        # training); without BOS the first token is context only, never scored.
        out.append(([bos_id] if bos_id is not None else []) + ids)
    return [ids for ids in out if len(ids) >= 2]


def measure_llm_quality(
    models: Mapping[str, Path],
    tokenizer_json: Path,
    texts: Sequence[str],
    *,
    bos_id: int | None = None,
    batch_size: int = 8,
    num_threads: int | None = None,
) -> dict[str, float | int]:
    """Perplexity of each ONNX model on `texts`, computed with ONNX Runtime.

    models: precision name -> model.onnx path, e.g. {"fp32": a, "int8": b}. Returns
    `perplexity_<name>` for each, `top1_agreement_<name>` for each model after the
    first (share of scored positions whose argmax equals the first model's), and
    `quality_texts` / `quality_tokens` (what was scored).
    """
    seqs = _encode_texts(tokenizer_json, texts, bos_id)
    if not seqs:
        raise ValueError("no held-out text with at least two tokens to measure perplexity on")
    result: dict[str, float | int] = {
        "quality_texts": len(seqs),
        "quality_tokens": sum(len(s) - 1 for s in seqs),
    }
    reference_argmax: list[np.ndarray] | None = None
    for name, path in models.items():
        session = make_session(Path(path), num_threads)
        nll, count, argmaxes = 0.0, 0, []
        for start in range(0, len(seqs), batch_size):
            chunk = seqs[start : start + batch_size]
            width = max(len(s) for s in chunk)
            # Right padding is harmless for full-sequence causal scoring: padded
            # slots come after every scored position and are masked out.
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, s in enumerate(chunk):
                ids[row, : len(s)] = s
                mask[row, : len(s)] = 1
            logp = _log_softmax(forward_full(session, ids, mask)[:, :-1])
            target = ids[:, 1:]
            scored = mask[:, 1:].astype(bool)
            token_logp = np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
            nll -= float(token_logp[scored].sum())
            count += int(scored.sum())
            argmaxes.append(logp.argmax(axis=-1)[scored])
        ppl = math.exp(nll / count)
        result[f"perplexity_{name}"] = round(ppl, 4)
        if reference_argmax is None:
            reference_argmax = argmaxes
        else:
            same = sum(int((a == b).sum()) for a, b in zip(argmaxes, reference_argmax, strict=True))
            result[f"top1_agreement_{name}"] = round(same / count, 4)
        LOG.info("perplexity %s = %.3f over %d tokens", name, ppl, count)
    return result


def greedy_generate_onnx(
    session,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
) -> list[list[int]]:
    """Greedy decoding of a batch of token-id prompts with a KV cache.

    Left padding, attention mask over past + new tokens, position_ids from the
    mask (as transformers' generate does). A finished row keeps being fed the pad
    token with mask 1, like generate, so batched results equal generate's. Returns
    the new tokens of each row, cut after its first EOS (EOS kept).
    """
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    ids = np.full((batch, width), pad_token_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
        mask[row, width - len(p) :] = 1
    input_names = {i.name for i in session.get_inputs()}
    specs = past_specs(session)
    output_names = ["logits"] + [n.replace("past_key_values.", "present.") for n, *_ in specs]
    past = {n: np.zeros((batch, h, 0, d), dtype=t) for n, h, d, t in specs}
    eos = set(eos_token_ids)
    finished = np.zeros(batch, dtype=bool)
    new_tokens: list[list[int]] = [[] for _ in range(batch)]
    step_ids = ids
    for _ in range(max_new_tokens):
        feed = {"input_ids": step_ids, "attention_mask": mask, **past}
        if "position_ids" in input_names:
            feed["position_ids"] = position_ids_from_mask(mask, step_ids.shape[1])
        outs = session.run(output_names, feed)
        next_tok = outs[0][:, -1].argmax(axis=-1).astype(np.int64)
        next_tok[finished] = pad_token_id
        for row in range(batch):
            if not finished[row]:
                new_tokens[row].append(int(next_tok[row]))
                finished[row] = int(next_tok[row]) in eos
        past = {n: o for (n, *_), o in zip(specs, outs[1:], strict=True)}
        if finished.all():
            break
        step_ids = next_tok[:, None]
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
    return new_tokens
