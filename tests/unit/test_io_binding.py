"""Decoding with I/O binding (the KV cache as OrtValues on the session's device,
worker/llm/device_kv.py) gives the numpy loop's tokens: real ONNX Runtime
sessions on CPU, where ORT binds to "cpu", on tiny exported fp32 models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from recgen.core.prompt import build_prompt
from worker.llm.batch import KVCache, concat
from worker.llm.device_kv import DeviceKVCache, DeviceKVOps, join_graph, last_graph, select_graph
from worker.llm.engine import Generator
from worker.llm.onnx_graph import ELEM_TYPE

WORDS = "star wars fargo heat casino toy story emma casablanca babe comedy tonight".split()


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory) -> Path:
    """A tiny Llama (GQA, a chat template: its prompts share a cached prefix), fp32."""
    pytest.importorskip("optimum.exporters.onnx")
    from export.llm.onnx_export import export_llm, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("llm")
    ckpt = make_tiny_checkpoint("llama", root / "hf")
    export_llm(ckpt, root / "llm", wheels_dir=root / "no-wheels", quantize="none", progress=False)
    return root / "llm"


def _ops(dtype: type, n: int = 2) -> DeviceKVOps:
    # Any CPU session will do: the ops take its providers.
    session = ort.InferenceSession(
        select_graph(1, ELEM_TYPE[np.dtype(dtype)]), providers=["CPUExecutionProvider"]
    )
    return DeviceKVOps(session, n, dtype, logits_dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_helper_graphs_are_valid_onnx(dtype):
    onnx = pytest.importorskip("onnx")
    elem = ELEM_TYPE[np.dtype(dtype)]
    for graph in (select_graph(3, elem), join_graph(3, elem), last_graph(elem)):
        onnx.checker.check_model(onnx.load_from_string(graph), full_check=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_device_rows_equal_numpy_rows(dtype):
    """select (rows kept, reordered, common padding trimmed) and join (left-padded
    to the longer past) give KVCache's arrays exactly."""
    rng = np.random.default_rng(0)
    ops = _ops(dtype)

    def cache(b: int, t: int, lead: int) -> tuple[KVCache, DeviceKVCache]:
        past = [rng.normal(size=(b, 2, t, 4)).astype(dtype) for _ in range(2)]
        mask = np.ones((b, t), dtype=np.int64)
        mask[:, :lead] = 0  # every row starts with padding
        mask[0, :] = 1  # except row 0
        return KVCache(past, mask), DeviceKVCache(ops.to_device(past), mask, ops)

    host_a, dev_a = cache(4, 7, 3)
    host_b, dev_b = cache(2, 4, 1)
    for rows in (np.array([3, 1]), np.array([0, 2, 3]), np.array([2])):  # row 0 gone: columns trimmed
        want, got = host_a.select(rows), dev_a.select(rows)
        np.testing.assert_array_equal(got.mask, want.mask)
        for w, g in zip(want.past, got.past, strict=True):
            assert g.device_name() == "cpu" and g.shape() == list(w.shape)
            np.testing.assert_array_equal(g.numpy(), w)
    for x, y, hx, hy in ((dev_a, dev_b, host_a, host_b), (dev_b, dev_a, host_b, host_a)):
        want, got = concat([hx, hy]), x.join(y)
        np.testing.assert_array_equal(got.mask, want.mask)
        for w, g in zip(want.past, got.past, strict=True):
            np.testing.assert_array_equal(g.numpy(), w)
    assert dev_a.join(dev_a.select(np.array([], dtype=np.int64))) is dev_a
    # A row repeated: how the cached prefix's past is given to every prompt of a prefill.
    rep = ops.select(dev_b.past, np.zeros(3, dtype=np.int64), 0)
    np.testing.assert_array_equal(rep[1].numpy(), np.repeat(host_b.past[1][:1], 3, axis=0))
    # Full logits (a graph without logits_to_keep): only the last position comes back.
    logits = rng.normal(size=(3, 5, 7)).astype(dtype)
    np.testing.assert_array_equal(ops.last_logits(ops.to_device([logits])[0]), logits[:, -1:])


@pytest.mark.parametrize("cached_prefix", [True, False])
def test_bound_steps_equal_numpy_steps(llm_dir, cached_prefix):
    """The same schedule on both paths: prefill, decode, rows leave, others join
    with another past length, decode on; every step's logits are bit-identical."""
    gens = [Generator(llm_dir, threads=1, io_binding=on, cache_prefix=cached_prefix) for on in (False, True)]
    host, dev = (g.model for g in gens)
    assert not host.io_binding and dev.io_binding and bool(dev.prefix) == cached_prefix
    g = gens[0]
    prompts = [g.encode(build_prompt(g.config, " ".join(WORDS[: 2 + 3 * i]))) for i in range(4)]
    runs = []
    for model in (host, dev):
        logits_seen = []
        logits, kv, _, _ = model.prefill(prompts[:3])
        tokens = logits.argmax(-1)
        pos = kv.mask.sum(axis=1)
        for step in range(6):
            logits_seen.append(logits)
            if step == 2:  # row 1 leaves, then the fourth prompt joins
                keep = np.array([0, 2])
                kv, tokens, pos = kv.select(keep), tokens[keep], pos[keep]
                new_logits, new_kv, _, _ = model.prefill(prompts[3:])
                kv = kv.join(new_kv)
                tokens = np.concatenate([tokens, new_logits.argmax(-1)])
                pos = np.concatenate([pos, new_kv.mask.sum(axis=1)])
            logits, kv = model.decode(tokens, pos, kv)
            tokens, pos = logits.argmax(-1), pos + 1
        runs.append((logits_seen, kv))
    (host_logits, host_kv), (dev_logits, dev_kv) = runs
    assert isinstance(dev_kv, DeviceKVCache) and isinstance(host_kv, KVCache)
    for a, b in zip(host_logits, dev_logits, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(host_kv.mask, dev_kv.mask)
    for a, v in zip(host_kv.past, dev_kv.past, strict=True):
        np.testing.assert_array_equal(a, v.numpy())


async def _waves(g: Generator, prompts: list[str], news: list[int], concurrency: int) -> list[list[int]]:
    """At most `concurrency` requests in flight; each one finished lets the next join
    while the others decode, so rows join and leave mid-batch."""
    handles: list = [None] * len(prompts)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            handles[i] = g.submit(prompts[i], max_new_tokens=news[i])
            await handles[i].result()

    await asyncio.gather(*(one(i) for i in range(len(prompts))))
    return [h.token_ids for h in handles]


@pytest.mark.parametrize("concurrency", [1, 8, 32])
def test_greedy_tokens_equal_with_and_without_binding(llm_dir, concurrency):
    n = concurrency + max(4, concurrency // 2)  # more requests than rows: some join later
    with (
        Generator(llm_dir, threads=1, max_seqs=concurrency, io_binding=False) as host,
        Generator(llm_dir, threads=1, max_seqs=concurrency) as dev,
    ):
        assert dev.model.io_binding and not host.model.io_binding and dev.model.prefix
        prompts = [build_prompt(dev.config, " ".join(WORDS[i % 5 : i % 5 + 1 + i % 9])) for i in range(n)]
        news = [2 + (7 * i) % 13 for i in range(n)]  # rows finish at different steps
        refs = [dev.generate_alone(p, k)[0] for p, k in zip(prompts, news, strict=True)]
        got = {
            name: asyncio.run(_waves(g, prompts, news, concurrency))
            for name, g in (("host", host), ("dev", dev))
        }
        assert got["dev"] == got["host"] == refs
        assert dev.stats().max_rows_per_step <= concurrency
        if concurrency > 1:  # some step gained a row the one before lacked, and some lost one
            steps = [set(s) for s in dev.recent_steps()]
            pairs = [(a, b) for a, b in zip(steps, steps[1:], strict=False) if a & b]
            assert any(b - a for a, b in pairs) and any(a - b for a, b in pairs)
