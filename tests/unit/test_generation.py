"""worker/llm/engine.py: continuous batching on real ONNX Runtime sessions of tiny
exported LLMs, checked against the unbatched reference loop (`generate_alone`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import pytest

from recgen.core.prompt import build_prompt
from worker.llm.api import Finished, GenerationHandle, QueueFull, TextPiece
from worker.llm.batch import KVCache, Request, concat, left_pad, position_ids
from worker.llm.decoding import IncrementalDecoder
from worker.llm.engine import Generator
from worker.llm.schedule import PrefillPolicy

ARCHS = ["gpt2", "llama", "qwen2"]
MESSAGES = [
    "Hello!",
    "Recommend a comedy for tonight.",
    "I recently watched Star Wars (1977) and Fargo (1996).",
    "Toy Story",
    "The user liked these items: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
]


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("optimum.exporters.onnx")
    from export.llm.onnx_export import export_llm, make_tiny_checkpoint

    root = tmp_path_factory.mktemp("llm")
    out = {}
    for arch in ARCHS:
        ckpt = make_tiny_checkpoint(arch, root / f"{arch}-hf")
        export_llm(ckpt, root / f"{arch}-llm", wheels_dir=root / "no-wheels", quantize="none", progress=False)
        out[arch] = root / f"{arch}-llm"
    return out


@pytest.fixture()
def gen(llm_dirs):
    with Generator(llm_dirs["gpt2"], threads=1) as g:
        yield g


def _prompt(g: Generator, message: str) -> str:
    return build_prompt(g.config, message)


async def _next_text(handle: GenerationHandle) -> str:
    """Wait for the request's first piece of text (and return it)."""
    async for event in handle:
        assert isinstance(event, TextPiece), event
        return event.text
    raise AssertionError("finished without text")


# -- continuous batching == the reference loop ----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_batched_greedy_equals_generate_alone(llm_dirs, arch):
    async def main(g: Generator) -> None:
        prompts = [_prompt(g, m) for m in MESSAGES]
        assert len({len(g.encode(p)) for p in prompts}) == len(prompts), "lengths must differ"
        refs = [g.generate_alone(p, 24) for p in prompts]
        # Three arrive together (one left-padded prefill); two join later, while
        # the first ones decode, with a different past length.
        first = [g.submit(p, max_new_tokens=24) for p in prompts[:3]]
        head = await _next_text(first[0])
        late = [g.submit(p, max_new_tokens=24) for p in prompts[3:]]
        results = await asyncio.gather(*(h.result() for h in first + late))
        for i, ((ref_ids, ref_text), (text, fin), h) in enumerate(
            zip(refs, results, first + late, strict=True)
        ):
            assert h.token_ids == ref_ids
            assert (head if i == 0 else "") + text == ref_text
            assert fin.reason == ("length" if len(ref_ids) == 24 else "eos")
            assert h.prefills == 1
        stats = g.stats()
        # The two late ones usually share one prefill; on a loaded machine the
        # scheduler may admit the first before the second is queued (3 calls).
        assert stats.prefill_calls in (2, 3) and stats.max_rows_per_step >= 4
        assert stats.tokens_generated == sum(len(r[0]) for r in refs)
        # Every prompt starts with the cached prompt prefix (none for GPT-2, no chat template).
        assert bool(g.model.prefix) == (arch != "gpt2")
        assert stats.prefix_tokens_reused == len(g.model.prefix) * len(prompts)

    with Generator(llm_dirs[arch], threads=1) as g:
        asyncio.run(main(g))


def _old_graph_copy(llm_dir: Path, dest: Path) -> Path:
    """The same model as a version exported before `logits_to_keep`: no such input, llm.json silent."""
    import json
    import shutil

    import onnx

    dest.mkdir()
    shutil.copyfile(llm_dir / "tokenizer.json", dest / "tokenizer.json")
    meta = json.loads((llm_dir / "llm.json").read_text())
    assert meta.pop("logits_to_keep_input") == "logits_to_keep"
    (dest / "llm.json").write_text(json.dumps(meta))
    model = onnx.load(str(llm_dir / "model.onnx"))
    kept = [i for i in model.graph.input if i.name != "logits_to_keep"]
    del model.graph.input[:]
    model.graph.input.extend(kept)  # the initializer stays: a constant 0, every position's logits
    onnx.save(model, str(dest / "model.onnx"))
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_last_position_prefill_equals_the_old_graph(llm_dirs, arch, tmp_path):
    async def run(g: Generator) -> list[list[int]]:
        hs = [g.submit(_prompt(g, m), max_new_tokens=16) for m in MESSAGES]
        await asyncio.gather(*(h.result() for h in hs))
        return [h.token_ids for h in hs]

    old_dir = _old_graph_copy(llm_dirs[arch], tmp_path / "old")
    # The old graph, fed whole prompts: what the engine did before.
    with (
        Generator(llm_dirs[arch], threads=1) as new,
        Generator(old_dir, threads=1, cache_prefix=False) as old,
    ):
        assert new.model.logits_to_keep == "logits_to_keep" and old.model.logits_to_keep is None
        assert asyncio.run(run(new)) == asyncio.run(run(old))
        # The reference loop (every position's logits) agrees with both.
        assert asyncio.run(run(new)) == [new.generate_alone(_prompt(new, m), 16)[0] for m in MESSAGES]


@pytest.mark.slow
def test_several_prefill_calls_between_decode_steps(llm_dirs):
    """Small calls, a budget of several: batched == alone, every prompt prefilled once."""

    async def main(g: Generator) -> None:
        longest = max(len(g.encode(_prompt(g, m))) for m in MESSAGES)
        assert g.policy.max_prefill_tokens < 2 * longest  # at most one long prompt per call
        hs = [g.submit(_prompt(g, m), max_new_tokens=12) for m in MESSAGES]
        await asyncio.gather(*(h.result() for h in hs))
        assert [h.token_ids for h in hs] == [g.generate_alone(_prompt(g, m), 12)[0] for m in MESSAGES]
        stats = g.stats()
        assert stats.prefill_rows == len(MESSAGES) and stats.prefill_calls >= 3
        assert all(h.prefills == 1 for h in hs)

    with Generator(llm_dirs["gpt2"], threads=1, max_prefill_tokens=40, prefill_budget=400) as g:
        asyncio.run(main(g))


def _queue(*lengths: int, max_new: int = 10) -> deque[Request]:
    rng = np.random.default_rng(0)
    return deque(
        Request(None, [1] * n, max_new, 0.0, 1.0, rng, float("inf"), None)  # type: ignore[arg-type]
        for n in lengths
    )


def test_prefill_policy_groups_calls_within_the_budget():
    policy = PrefillPolicy(max_seqs=8, max_batch_tokens=4096, max_prefill_tokens=200, prefill_budget=500)
    waiting = _queue(90, 95, 80, 100, 90, 60)
    calls = policy.admit(waiting, rows=0, widest=0)
    # Calls of <= 200 padded tokens: 2 × 95, 2 × 100, then 90 (480 in all); the 60
    # would pad into the third call (2 × 90): 570 > 500, so it waits for the next step.
    assert [[len(r.prompt) for r in c] for c in calls] == [[90, 95], [80, 100], [90]]
    assert [len(r.prompt) for r in waiting] == [60]
    # One call per step (the old policy): only the first call.
    one = PrefillPolicy(max_seqs=8, max_batch_tokens=4096, max_prefill_tokens=200, prefill_budget=200)
    assert [[len(r.prompt) for r in c] for c in one.admit(_queue(90, 95, 80), 0, 0)] == [[90, 95]]


def test_prefill_policy_bounds_sequences_and_kv_tokens_fifo():
    policy = PrefillPolicy(max_seqs=4, max_batch_tokens=1000, max_prefill_tokens=256, prefill_budget=1024)
    # 3 rows run, so one more sequence fits.
    assert [len(c) for c in policy.admit(_queue(10, 10, 10), rows=3, widest=50)] == [1]
    # KV: 2 running rows at width 300; a newcomer of 290 + 10 keeps 3 × 300 <= 1000, the next
    # (4 × 300 > 1000) waits, and so does everything behind it (FIFO).
    waiting = _queue(290, 5, 5)
    assert [len(c) for c in policy.admit(waiting, rows=2, widest=300)] == [1]
    assert [len(r.prompt) for r in waiting] == [5, 5]
    # A prompt longer than a call is still prefilled, alone.
    calls = policy.admit(_queue(600, 5), rows=0, widest=0)
    assert [[len(r.prompt) for r in c] for c in calls] == [[600]]
    with pytest.raises(AssertionError, match="prefill_budget"):
        PrefillPolicy(max_seqs=8, max_prefill_tokens=512, prefill_budget=256)


@pytest.mark.slow
def test_short_request_overtakes_a_long_one(gen):
    async def main() -> None:
        long = gen.submit(_prompt(gen, MESSAGES[2]), max_new_tokens=64)
        await _next_text(long)  # the long one is decoding now
        short = gen.submit(_prompt(gen, MESSAGES[1]), max_new_tokens=4)
        text, fin = await short.result()
        assert fin == Finished("length", 4) and text
        assert long.finished is None, "the short request must finish while the long decodes"
        _, long_fin = await long.result()
        assert long_fin.reason == "length" and long_fin.tokens == 64
        assert long.prefills == 1  # joined, never recomputed
        stats = gen.stats()
        assert stats.prefill_calls == 2
        both = [s for s in gen.recent_steps() if long.request_id in s and short.request_id in s]
        assert len(both) == short.decode_steps >= 1
        assert stats.max_rows_per_step == 2 and stats.mean_seqs_per_step > 1
        assert len(stats.ttft_s) == 2 and len(stats.token_latency_s) == 64 + 4 - 2

    asyncio.run(main())


@pytest.mark.slow
def test_cancel_removes_the_sequence_from_the_batch(gen):
    async def main() -> None:
        a = gen.submit(_prompt(gen, MESSAGES[2]), max_new_tokens=64)
        b = gen.submit(_prompt(gen, MESSAGES[4]), max_new_tokens=64)
        await _next_text(b)
        b.cancel()
        _, b_fin = await b.result()
        assert b_fin.reason == "cancelled" and b_fin.tokens < 64
        _, a_fin = await a.result()
        assert a_fin.reason == "length" and a_fin.tokens == 64
        steps = gen.recent_steps()
        with_b = [i for i, s in enumerate(steps) if b.request_id in s]
        assert len(with_b) == b.decode_steps < 63
        after = steps[with_b[-1] + 1 :] if with_b else steps
        assert after and all(s == (a.request_id,) for s in after)
        b.cancel()  # idempotent
        assert gen.stats().finished == {"cancelled": 1, "length": 1}

    asyncio.run(main())


@pytest.mark.slow
def test_deadline_stops_a_sequence(gen):
    async def main() -> None:
        expired = gen.submit(_prompt(gen, MESSAGES[0]), max_new_tokens=8, deadline=time.monotonic() - 1)
        assert await expired.result() == ("", Finished("deadline", 0))
        assert expired.prefills == 0

        a = gen.submit(_prompt(gen, MESSAGES[2]), max_new_tokens=200)
        await _next_text(a)
        d = gen.submit(_prompt(gen, MESSAGES[0]), max_new_tokens=200, deadline=time.monotonic() + 0.005)
        _, d_fin = await d.result()
        assert d_fin.reason == "deadline" and d_fin.tokens < 200
        assert a.finished is None, "the other sequence keeps decoding"
        a.cancel()
        await a.result()
        steps = gen.recent_steps()
        with_d = [i for i, s in enumerate(steps) if d.request_id in s]
        assert len(with_d) == d.decode_steps
        assert any(d.request_id not in s for s in steps[(with_d[-1] if with_d else 0) + 1 :])

    asyncio.run(main())


@pytest.mark.slow
def test_queue_full_raises_and_waiting_requests_cancel(llm_dirs):
    async def main(g: Generator) -> None:
        handles = []
        with pytest.raises(QueueFull):
            for _ in range(g.max_seqs + g.max_queue + 1):
                handles.append(g.submit(_prompt(g, MESSAGES[2]), max_new_tokens=200))
        assert g.stats().queue_depth == g.max_queue
        assert len(handles) in (g.max_queue, g.max_queue + g.max_seqs)
        for h in handles:
            h.cancel()
        results = await asyncio.gather(*(h.result() for h in handles))
        assert all(fin.reason == "cancelled" for _, fin in results)
        assert g.stats().queue_depth == 0
        with pytest.raises(ValueError, match="exceed"):
            g.submit(_prompt(g, MESSAGES[0]), max_new_tokens=5000)

    with Generator(llm_dirs["gpt2"], threads=1, max_seqs=1, max_queue=2) as g:
        asyncio.run(main(g))


@pytest.mark.slow
def test_budget_limits_rows_per_step(llm_dirs):
    async def main(g: Generator) -> None:
        hs = [g.submit(_prompt(g, m), max_new_tokens=16) for m in MESSAGES]
        await asyncio.gather(*(h.result() for h in hs))
        refs = [g.generate_alone(_prompt(g, m), 16)[0] for m in MESSAGES]
        assert [h.token_ids for h in hs] == refs
        assert g.stats().max_rows_per_step <= 2

    with Generator(llm_dirs["gpt2"], threads=1, max_seqs=2) as g:
        asyncio.run(main(g))


@pytest.mark.slow
def test_sampling_is_reproducible_per_seed(gen):
    async def main() -> list[list[int]]:
        p = _prompt(gen, MESSAGES[1])
        kw = dict(max_new_tokens=20, temperature=0.9)
        hs = [
            gen.submit(p, seed=7, **kw),
            gen.submit(p, seed=7, **kw),
            gen.submit(p, seed=8, **kw),
            gen.submit(p, seed=7, top_p=0.5, **kw),
            gen.submit(p, seed=7, top_p=0.5, **kw),
        ]
        await asyncio.gather(*(h.result() for h in hs))
        return [h.token_ids for h in hs]

    a, b, c, d, e = asyncio.run(main())
    assert a == b and d == e
    assert a != c
    greedy = gen.generate_alone(_prompt(gen, MESSAGES[1]), 20)[0]
    assert a != greedy


# -- pieces: detokenizer and KV cache -------------------------------------------


@pytest.mark.slow
def test_incremental_detokenization_never_splits_characters(llm_dirs):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(llm_dirs["gpt2"] / "tokenizer.json"))
    text = "Amélie ☃ 東京 naïve — 🎬 Se7en (1995)!"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) > len(text)  # multi-byte characters span several tokens
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # An incomplete final character is held back, then dropped.
    dec = IncrementalDecoder(tok)
    snowman = tok.encode("☃", add_special_tokens=False).ids
    assert [dec.push(i) for i in snowman[:-1]] == [""] * (len(snowman) - 1)
    assert dec.flush() == ""


def test_kv_cache_concat_select_and_trim():
    rng = np.random.default_rng(0)
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [1, 1, 0]]
    a = KVCache([rng.normal(size=(2, 2, 3, 4)).astype(np.float32)], mask)
    b = KVCache([rng.normal(size=(1, 2, 5, 4)).astype(np.float32)], np.ones((1, 5), np.int64))
    ab = concat([a, b])
    assert ab.past[0].shape == (3, 2, 5, 4) and ab.length == 5
    assert ab.mask.tolist() == [[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
    np.testing.assert_array_equal(ab.past[0][:2, :, 2:], a.past[0])
    np.testing.assert_array_equal(ab.past[0][:2, :, :2], 0)
    # The longest row leaves: the two leading all-padding columns go too.
    kept = ab.select(np.array([0, 1]))
    assert kept.length == 3 and kept.mask.tolist() == mask.tolist()
    np.testing.assert_array_equal(kept.past[0], a.past[0])
    assert kept.past[0].flags.c_contiguous
    assert ab.step_mask().shape == (3, 6)


def test_serving_modules_never_import_torch():
    code = (
        "import sys, worker.llm.engine, worker.llm.grounded, recgen.core.grounding, recgen.core.prompt; "
        "bad = sorted(m for m in ('torch', 'transformers', 'optimum') if m in sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


@pytest.mark.slow
def test_stalled_reader_loses_its_decode_slot(gen):
    from worker.llm.api import MAX_UNREAD_EVENTS

    async def main() -> None:
        stalled = gen.submit(_prompt(gen, MESSAGES[0]), max_new_tokens=MAX_UNREAD_EVENTS * 3)
        # Nobody reads `stalled`: its pieces pile up until it is cancelled.
        for _ in range(500):
            if stalled.finished is not None:
                break
            await asyncio.sleep(0.01)
        assert stalled.slow_reader and stalled.finished is not None
        assert stalled.finished.reason == "cancelled"
        assert len(stalled.token_ids) < MAX_UNREAD_EVENTS * 3
        assert gen.stats().running == 0  # it left the batch: no decode slot held

    asyncio.run(main())
