"""tools/gpu_check: the wheel parts' round trip, the goals, the tokenizer, and the CPU degrade path.

The degrade test runs the real check end to end on a 2-layer model (export with
torch.onnx, parity against transformers, int8, the worker's Generator on CPU) and
asserts that every CUDA arm is reported skipped with the reason where this
onnxruntime has no CUDA provider. ~15 s on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tools.gpu_check import wheels
from tools.gpu_check.arms import Arm, Point, binding_supported
from tools.gpu_check.report import goals
from tools.gpu_check.tokenizer import PROMPT_PREFIX, PROMPT_SUFFIX, build_tokenizer


def _fake_wheels(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    blobs = {"big-1.0-py3-none-any.whl": rng.bytes(5000), "small-2.0-py3-none-any.whl": rng.bytes(300)}
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    return blobs


def test_wheels_split_stash_join_round_trip(tmp_path: Path) -> None:
    blobs = _fake_wheels(tmp_path / "whl")
    part = 2000 / wheels.MIB  # parts of 2,000 bytes, calls of at most 2,500
    m = wheels.split(tmp_path / "whl", tmp_path / "carry", part_mib=part, call_mib=2500 / wheels.MIB)
    big = next(f for f in m["files"] if f["name"].startswith("big"))
    assert [p["size"] for p in big["parts"]] == [2000, 2000, 1000]
    calls = sorted((tmp_path / "carry").glob("call-*"))
    assert len(calls) == m["calls"] == 3  # 2000 | 2000 | 1000 + 300
    for c in calls:
        assert sum(p.stat().st_size for p in c.glob("*.part*")) <= 2500
    stash = tmp_path / "stash"
    status = wheels.stash(calls[0], stash)
    assert status["calls_missing"] == [2, 3]
    with pytest.raises(SystemExit, match=r"carry calls \[2, 3\]"):
        wheels.join(stash, tmp_path / "joined")
    for c in calls[1:]:
        wheels.stash(c, stash)
    joined = wheels.join(stash, tmp_path / "joined")
    assert {p.name: p.read_bytes() for p in joined} == blobs


def test_stash_refuses_a_damaged_part(tmp_path: Path) -> None:
    _fake_wheels(tmp_path / "whl")
    wheels.split(tmp_path / "whl", tmp_path / "carry", part_mib=2000 / wheels.MIB, call_mib=1)
    call = tmp_path / "carry" / "call-01"
    victim = next(call.glob("*.part*"))
    victim.write_bytes(b"x" + victim.read_bytes()[1:])
    with pytest.raises(SystemExit, match="damaged in transit"):
        wheels.stash(call, tmp_path / "stash")


def test_device_set_drops_what_the_gpu_machine_has(tmp_path: Path) -> None:
    req = tmp_path / "r.txt"
    req.write_text(
        "# c\nonnxruntime-gpu[cuda,cudnn]==1.31.1\nnumpy==2.4.6\n"
        "psycopg[binary]==3.3.9  # pg\nfaiss-cpu==1.15.1\n"
    )
    assert wheels.requirements(req) == ["onnxruntime-gpu[cuda,cudnn]==1.31.1", "faiss-cpu==1.15.1"]
    assert "onnxruntime-gpu" in " ".join(wheels.requirements(Path(wheels.ROOT / "requirements-gpu.txt")))
    assert not any(
        r.startswith("onnxruntime==") for r in wheels.requirements(wheels.ROOT / "requirements-gpu.txt")
    )


def test_equality_policy_accepts_only_near_ties() -> None:
    from tools.gpu_check.equality import compare

    logits = np.zeros(4)
    cpu = [([5, 6, 7, 8], [0.5, 0.5, 0.001, 0.5], logits), ([5, 6, 7, 8], [0.5, 0.5, 0.5, 0.5], logits)]
    same = [(t, None, logits) for t, _, _ in cpu]
    assert compare(cpu, same)["ok"] and compare(cpu, same)["agreeing_tokens"] == 8
    tie = [([5, 6, 9, 9], None, logits), ([5, 6, 7, 8], None, logits)]  # parts where the margin is 0.001
    r = compare(cpu, tie)
    assert r["ok"] and r["prompts"][0]["agree_until"] == 2 and r["prompts"][0]["near_tie"]
    real = [([5, 6, 7, 8], None, logits), ([5, 9, 7, 8], None, logits)]  # parts with a 0.5 margin
    assert not compare(cpu, real)["ok"]
    drift = [(t, None, logits + 0.05) for t, _, _ in cpu]  # same tokens, prefill logits 0.05 apart
    assert not compare(cpu, drift)["ok"]


def _arm(name: str, tps: float | None, skipped: str | None = None) -> Arm:
    a = Arm(name, skipped)
    if tps is not None:
        a.points.append(Point(32, 64, 2048, 2048 / tps, tps, 0.1))
    return a


def test_goals_are_ratios_and_unmeasured_when_an_arm_is_skipped() -> None:
    arms = [
        _arm("ort-cuda-binding", 9000.0),
        _arm("ort-cuda-no-binding", 2000.0),
        _arm("pytorch-cuda-generate", 10000.0),
        _arm("ort-cpu-int8", None, skipped=None),
    ]
    by = {g["goal"]: g for g in goals(arms)}
    assert by["io_binding_vs_no_binding"]["value"] == 4.5 and by["io_binding_vs_no_binding"]["met"] is True
    assert by["ort_cuda_vs_pytorch_generate"]["met"] is False
    assert by["ort_cuda_vs_cpu_int8"]["met"] is None
    assert "no batch 32 point" in by["ort_cuda_vs_cpu_int8"]["not_measured"]
    skipped = goals([_arm("ort-cuda-binding", None, skipped="no CUDAExecutionProvider in this onnxruntime")])
    assert all(g["met"] is None for g in skipped)
    assert "no CUDAExecutionProvider" in skipped[0]["not_measured"]


def test_tokenizer_covers_the_vocabulary_and_round_trips_prompts() -> None:
    tok = build_tokenizer(49152)
    assert tok.get_vocab_size() == 49152
    text = "I liked Fargo (1996) and Amélie (2001)."
    ids = tok.encode(PROMPT_PREFIX + text + PROMPT_SUFFIX, add_special_tokens=False).ids
    assert ids[0] == 1 and 2 in ids  # <|im_start|> ... <|im_end|>: the special tokens stay whole
    assert ids[-1] == tok.token_to_id("\u010a")  # a byte-level "\n": one token per byte
    assert text in tok.decode(ids)
    assert tok.decode([49151]).isascii()  # the filler tokens decode to printable words


def test_cpu_rehearsal_degrades_with_the_reason(tmp_path: Path) -> None:
    from tools.gpu_check.run import main

    out = tmp_path / "out"
    argv = ["--tiny", "--quick", "--no-loadtest", "--no-faiss", "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["model"]["parity_vs_transformers_cpu"]["ok"]
    arms = {a["name"]: a for a in doc["arms"]}
    cpu = arms["ort-cpu-int8"]
    assert cpu["skipped"] is None and [p["batch"] for p in cpu["points"]] == [1, 8]
    assert all(p["tokens"] == p["batch"] * 8 and p["tokens_per_s"] > 0 for p in cpu["points"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "no CUDAExecutionProvider in this onnxruntime" in arms["ort-cuda-binding"]["skipped"]
        assert "no CUDAExecutionProvider" in doc["equality"]["skipped"]
        assert "torch.cuda.is_available() is False" in arms["pytorch-cuda-generate"]["skipped"]
        assert arms["pytorch-cpu-generate"]["points"][0]["tokens"] == 8  # the CPU rehearsal of the arm
        if binding_supported():  # the CUDA arms' code paths, rehearsed on CPU with binding on and off
            assert arms["ort-cpu-fp32-binding"]["info"]["io_binding"] is True
            assert arms["ort-cpu-fp32-no-binding"]["info"]["io_binding"] is False
        assert all(g["met"] is None for g in doc["goals"])
    assert doc["failures"] == []
