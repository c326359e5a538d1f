"""Bench phase "baselines": the server's prompts decoded one at a time by the served ONNX model
without batching and by transformers `generate` in PyTorch fp32, each in its own process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.bench.plan import Plan, run_py
from tools.harness.procs import ROOT


def phase_baselines(plan: Plan, srv: dict[str, Any], wheels: Path, work: Path) -> dict[str, Any]:
    """The same prompts, one at a time: ONNX without batching, then transformers generate (fp32)."""
    from recgen.repository import ModelRepository
    from tools.gen_bench.users import build_prompts

    llm_dir = Path(srv["_llm_dir"])
    llm_cfg = json.loads((llm_dir / "llm.json").read_text())
    mv = ModelRepository(str(llm_dir.parent.parent)).open(llm_dir.parent.name, verify=False)
    catalog = {it.item_id: it for it in mv.catalog()}
    prompts = build_prompts(llm_cfg, catalog, srv["_users"], srv["_ranked"])
    pfile = work / "prompts.json"
    pfile.write_text(json.dumps(prompts, indent=1))
    out: dict[str, Any] = {"prompts_available": len(prompts)}
    common = [
        "--prompts",
        str(pfile),
        "--llm",
        str(llm_dir),
        "--threads",
        str(plan.threads),
        "--max-new-tokens",
        str(plan.max_new_tokens),
        "--wheels",
        str(wheels),
    ]
    o = work / "ort_alone.json"
    run_py(
        ["-m", "tools.gen_bench", "ort-alone", *common, "--limit", str(plan.ort_prompts), "--out", str(o)],
        threads=plan.threads,
        timeout=1200,
        log=work / "baselines.log",
    )
    out["onnx_alone"] = json.loads(o.read_text())
    o = work / "torch.json"
    run_py(
        [
            "-m",
            "tools.gen_bench",
            "torch",
            *common,
            "--limit",
            str(plan.torch_prompts),
            "--out",
            str(o),
            "--hf",
            str(ROOT / ".cache" / "bench" / "smollm2-hf"),
        ],
        threads=plan.threads,
        timeout=1800,
        log=work / "baselines.log",
    )
    out["pytorch"] = json.loads(o.read_text())
    # The server's text at concurrency 1 versus the same prompt decoded alone (same ONNX model, greedy).
    same = compared = 0
    for p, text in zip(prompts, out["onnx_alone"]["texts"], strict=False):
        got = srv["_texts_c1"].get(p["user_id"])
        if got is None or got[1] != "TEXT_STATUS_COMPLETE":
            continue
        compared += 1
        same += got[0].strip() == (p["primer"] + text).strip()
    out["server_vs_alone_texts"] = {"compared": compared, "identical": same}
    return out
