"""`python -m tools.gpu_check`: every GPU figure of issue #19 in one run; a clear skip where CUDA is missing.

Stages, in order of what matters most if time runs out (the JSON is rewritten
after each, so a run cut short still leaves what it measured):

1. environment: versions, providers, the GPU's name, CUDA libraries (cuda_env.py);
2. model: SmolLM2-135M's architecture with random weights, exported with torch.onnx,
   then checked against transformers on CPU (model.py; a failed check is reported, the rest runs);
3. equality: greedy tokens on CUDA against CPU, fp32 (equality.py);
4. CUDA arms: the worker's Generator with and without I/O binding, PyTorch `generate`;
5. CPU int8: the graph quantized as `recgen export` does (export/llm/graph.py), Generator on CPU;
6. serving: a short Recommend load test of `recgen serve --device cuda` (serving.py);
7. FAISS: flat search CPU against GPU, where this faiss has GPU support (faiss_arm.py);
8. goals, table, JSON (report.py).

Where CUDA is missing (this onnxruntime has no CUDA provider, or torch sees no GPU)
the CUDA arms are reported skipped with the reason, and everything else runs: the
load test then runs with --device cpu, and the two CUDA Generator arms and PyTorch
`generate` run once on CPU at the smallest batch (rehearsals of their code paths, not
goal figures). --quick: batch
1 and 8, 8 new tokens, a 10 s load test: the CPU rehearsal. Exit status: 0 when
every stage ran and every correctness check passed (goals are figures, not checks);
1 when a stage failed or a check did not pass; 3 with --require-cuda when a CUDA arm
was skipped (the GPU machine: a skip there is a failure).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tools.gpu_check import arms as A
from tools.gpu_check import report

LOG = logging.getLogger("tools.gpu_check")
ROOT = Path(__file__).resolve().parents[2]

_TITLES = (
    "Star Wars (1977)",
    "Fargo (1996)",
    "Heat (1995)",
    "Casino (1995)",
    "Toy Story (1995)",
    "Emma (1996)",
)


def prompts(n: int) -> list[str]:
    """n server-shaped messages of slightly different lengths (left padding is exercised)."""
    from tools.gpu_check.tokenizer import PROMPT_PREFIX, PROMPT_SUFFIX

    out = []
    for i in range(n):
        a, b = _TITLES[i % len(_TITLES)], _TITLES[(i * 5 + 1) % len(_TITLES)]
        msg = f"I recently watched {a} and {b}. Write one short sentence recommending" + " more" * (i % 4)
        out.append(PROMPT_PREFIX + f"{msg} (request {i})." + PROMPT_SUFFIX)
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "var" / "gpu-check", help="work folder (models, logs)")
    p.add_argument("--json", type=Path, default=None, help="the report (default: OUT/gpu_check.json)")
    p.add_argument("--quick", action="store_true", help="batches 1,8, 8 new tokens, 10 s load test")
    p.add_argument(
        "--tiny", action="store_true", help="a 2-layer model instead of SmolLM2-135M's shape (tests)"
    )
    p.add_argument("--batches", default=None, help="comma-separated (default 1,8,32,64)")
    p.add_argument("--new-tokens", type=int, default=None, help="forced new tokens per request (default 64)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT / torch CPU threads")
    p.add_argument("--no-loadtest", action="store_true")
    p.add_argument("--no-faiss", action="store_true")
    p.add_argument("--faiss-sizes", default=None, help="catalog sizes (default 1682,1000000)")
    p.add_argument("--base", type=Path, default=None, help="base model repository (make gpu-check-base)")
    p.add_argument("--require-cuda", action="store_true", help="exit 3 when any CUDA arm is skipped")
    a = p.parse_args(argv)
    a.batches = [int(b) for b in (a.batches or ("1,8" if a.quick else "1,8,32,64")).split(",")]
    a.new_tokens = a.new_tokens or (8 if a.quick else 64)
    a.faiss_sizes = [int(s) for s in (a.faiss_sizes or ("1682" if a.quick else "1682,1000000")).split(",")]
    a.json = a.json or a.out / "gpu_check.json"
    return a


def _versions() -> dict[str, Any]:
    from importlib import metadata

    out: dict[str, Any] = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    for mod in ("onnxruntime", "faiss", "grpc", "google.protobuf"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            out[f"{mod} (imported)"] = (
                f"{getattr(m, '__version__', '?')} from {Path(m.__file__ or '').parent}"
            )
        except Exception as e:  # reported, not fatal: a later stage says what it lacks
            out[f"{mod} (imported)"] = f"not importable: {e}"
    return out


def _gpu() -> dict[str, Any]:
    import shutil
    import subprocess

    info: dict[str, Any] = {"name": None}
    try:
        import torch

        info["torch_cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            info["name"] = torch.cuda.get_device_name(0)
            info["torch_cuda"] = torch.version.cuda
    except Exception as e:
        info["torch_error"] = str(e)
    if shutil.which("nvidia-smi"):
        q = "--query-gpu=name,memory.total,driver_version"
        r = subprocess.run(
            ["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
        info["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
        info["name"] = info["name"] or (r.stdout.split(",")[0].strip() or None)
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("worker").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    doc: dict[str, Any] = {"command": " ".join(["python -m tools.gpu_check", *(argv or sys.argv[1:])])}
    doc.update(quick=args.quick, batches=args.batches, new_tokens=args.new_tokens, threads=args.threads)
    doc["stages"] = {}
    failures: list[str] = []
    arm_list: list[A.Arm] = []
    state: dict[str, Any] = {}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        LOG.info("== %s", name)
        t = time.perf_counter()
        rec: dict[str, Any] = {}
        try:
            result = fn()
            rec["ok"] = True
        except Exception as e:
            result = None
            rec.update(ok=False, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
            failures.append(f"{name}: {type(e).__name__}: {e}")
            LOG.error("stage %s failed: %s", name, e)
        rec["seconds"] = round(time.perf_counter() - t, 2)
        doc["stages"][name] = rec
        doc["arms"] = [asdict(a) for a in arm_list]
        doc["wall_s"] = round(time.perf_counter() - t_start, 1)
        report.write(args.json, doc)
        return result

    def environment() -> None:
        from tools.gpu_check import cuda_env

        doc["cuda_libraries"] = cuda_env.prepare()
        doc["versions"] = _versions()
        import onnxruntime as ort

        doc["ort_providers"] = ort.get_available_providers()
        doc["gpu"] = _gpu()
        doc["io_binding_in_generator"] = A.binding_supported()
        state["cuda_skip"] = A.cuda_provider_reason()
        try:
            import torch

            state["torch_skip"] = None if torch.cuda.is_available() else "torch.cuda.is_available() is False"
        except ImportError as e:
            state["torch_skip"] = f"torch not importable: {e}"
        doc["cuda_skipped"] = {"onnxruntime": state["cuda_skip"], "torch": state["torch_skip"]}
        if state["cuda_skip"]:
            LOG.warning("CUDA arms will be skipped: %s", state["cuda_skip"])

    stage("environment", environment)

    def model() -> None:
        from tokenizers import Tokenizer

        from tools.gpu_check import model as M
        from tools.gpu_check.tokenizer import EOS_ID

        spec = M.TINY if args.tiny else M.SMOLLM2_135M
        hf = M.build_hf(spec)
        fp32 = M.export_onnx(hf, spec, args.out / "onnx-fp32" / "model.onnx")
        never = [spec.vocab]  # an id past the logits: eos never fires, every request makes its tokens
        speed = M.write_llm_dir(
            args.out / "llm-fp32", spec, fp32, precision="fp32", eos_token_ids=never, note="eos never fires"
        )
        served = M.write_llm_dir(
            args.out / "llm-served", spec, fp32, precision="fp32", eos_token_ids=[EOS_ID], note="served"
        )
        tok = Tokenizer.from_file(str(speed / "tokenizer.json"))
        texts = prompts(max(args.batches))
        ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
        doc["model"] = {
            "spec": asdict(spec),
            "parameters": sum(p.numel() for p in hf.parameters()),
            "onnx_bytes": fp32.stat().st_size,
            "prompt_tokens": [min(map(len, ids)), max(map(len, ids))],
        }
        state.update(spec=spec, hf=hf, fp32=fp32, speed=speed, served=served, texts=texts, ids=ids)
        state["prompt_tokens"] = max(map(len, ids))

    stage("model", model)
    if "speed" not in state:
        return _finish(doc, args, arm_list, failures, t_start)

    def parity() -> None:  # a failure is reported, and the timing still runs: it needs no parity
        from tools.gpu_check import model as M

        doc["model"]["parity_vs_transformers_cpu"] = par = M.parity(
            state["hf"], state["fp32"], state["ids"][0]
        )
        if not par["ok"]:
            raise RuntimeError(f"the ONNX graph differs from transformers on the same weights: {par}")

    stage("parity", parity)

    def equality() -> None:
        from tools.gpu_check import equality as E
        from worker.llm.session import make_session

        n, new = 4, 32 if not args.quick else 16
        cpu_s = make_session(state["fp32"], threads=args.threads, providers=A.CPU)
        cpu = [E.greedy(cpu_s, ids, new) for ids in state["ids"][:n]]
        state["cpu_greedy"] = cpu[0][0]
        doc["cpu_greedy"] = {"tokens_prompt0": cpu[0][0], "distinct": [len(set(c[0])) for c in cpu]}
        if state["cuda_skip"]:
            doc["equality"] = {"skipped": state["cuda_skip"]}
            return
        cuda_s = E.cuda_session(state["fp32"], args.threads)
        cuda = [E.greedy(cuda_s, ids, new) for ids in state["ids"][:n]]
        doc["equality"] = res = E.compare(cpu, cuda)
        if not res["ok"]:
            raise RuntimeError(
                f"greedy tokens differ between CUDA and CPU beyond a near-tie: {res['prompts']}"
            )

    stage("equality", equality)

    common = dict(
        threads=args.threads,
        prompts=state["texts"],
        batches=args.batches,
        new_tokens=args.new_tokens,
        prompt_tokens=state["prompt_tokens"],
    )
    for name, binding in (("ort-cuda-binding", True), ("ort-cuda-no-binding", False)):

        def cuda_arm(name: str = name, binding: bool = binding) -> None:
            arm = A.generator_arm(name, state["speed"], providers=A.CUDA, io_binding=binding, **common)  # type: ignore[arg-type]
            arm_list.append(arm)
            if not arm.skipped and arm.info["session_providers"][0] != "CUDAExecutionProvider":
                raise RuntimeError(
                    f"{name}: CUDAExecutionProvider not first: {arm.info['session_providers']}"
                )
            if binding and not arm.skipped and arm.info.get("io_binding") is False:
                raise RuntimeError(f"{name}: io_binding=True asked, gen.model.io_binding is False")
            if arm.skipped and state["cuda_skip"]:  # rehearse this arm's code path on CPU, smallest batch
                cpu = A.generator_arm(
                    name.replace("cuda", "cpu-fp32"),
                    state["speed"],
                    providers=A.CPU,
                    io_binding=binding,
                    **{**common, "batches": args.batches[:1]},  # type: ignore[arg-type]
                )
                cpu.info["note"] = (
                    "CPU rehearsal of the CUDA arm's code path (CUDA missing); not a goal figure"
                )
                arm_list.append(cpu)

        stage(name, cuda_arm)

    def torch_generate() -> None:
        kw = dict(prompt_ids=state["ids"], new_tokens=args.new_tokens, pad_id=2, threads=args.threads)
        arm = A.torch_arm("pytorch-cuda-generate", state["hf"], device="cuda", batches=args.batches, **kw)  # type: ignore[arg-type]
        arm_list.append(arm)
        if arm.skipped:  # rehearse the code path on CPU once, at the smallest batch
            cpu = A.torch_arm(
                "pytorch-cpu-generate", state["hf"], device="cpu", batches=args.batches[:1], **kw
            )  # type: ignore[arg-type]
            cpu.info["note"] = "CPU rehearsal of the PyTorch arm (CUDA missing); not a goal figure"
            arm_list.append(cpu)
            arm = cpu
        ref, got = state.get("cpu_greedy"), arm.info.get("greedy_batch1")
        if ref and got:  # the same weights: ORT fp32 CPU's greedy tokens vs generate's
            k = min(len(ref), len(got))
            same = next((i for i in range(k) if ref[i] != got[i]), k)
            doc["pytorch_vs_ort_greedy"] = {"device": arm.info["device"], "agree_until": same, "compared": k}

    stage("pytorch-generate", torch_generate)

    def cpu_int8() -> None:
        from export.llm.graph import quantize_int8
        from tools.gpu_check import model as M

        t = time.perf_counter()
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.WARNING)  # onnxruntime.quantization logs every tensor on the root logger
        try:
            int8, info = quantize_int8(
                state["fp32"], args.out / "onnx-int8", state["ids"][:4], num_threads=args.threads
            )
        finally:
            root.setLevel(level)
        spec = state["spec"]
        llm = M.write_llm_dir(
            args.out / "llm-int8", spec, int8, precision="int8", eos_token_ids=[spec.vocab], note=""
        )
        doc["int8"] = {"quantize_s": round(time.perf_counter() - t, 1), "bytes": int8.stat().st_size, **info}
        arm_list.append(A.generator_arm("ort-cpu-int8", llm, providers=A.CPU, io_binding=None, **common))  # type: ignore[arg-type]

    stage("ort-cpu-int8", cpu_int8)

    if not args.no_loadtest:

        def serving() -> None:
            from tools.gpu_check.serving import BASE, loadtest

            device = "cpu" if state["cuda_skip"] else "cuda"
            res = loadtest(
                device=device,
                llm_dir=state["served"],
                work=args.out / "serving",
                threads=args.threads,
                concurrency=4 if args.quick else 16,
                duration=10 if args.quick else 20,
                # On CPU a text takes seconds: a small share keeps the short quick run measuring.
                explain_share=0.05 if args.quick else 0.2,
                base_root=args.base or BASE,
            )
            if device == "cpu" and "skipped" not in res:
                res["cuda_skipped"] = f"{state['cuda_skip']}; ran with --device cpu instead (rehearsal)"
            doc["loadtest"] = res
            if res.get("errors"):
                unexpected = {
                    k: v for k, v in res["status_counts"].items() if k not in ("OK", "DEADLINE_EXCEEDED")
                }
                if unexpected:
                    raise RuntimeError(f"load test statuses {unexpected}: {res.get('error_examples')}")

        stage("loadtest", serving)

    if not args.no_faiss:

        def faiss_stage() -> None:
            from tools.gpu_check import faiss_arm

            doc["faiss"] = faiss_arm.run(args.faiss_sizes, args.threads, seconds=0.5 if args.quick else 2.0)

        stage("faiss", faiss_stage)

    return _finish(doc, args, arm_list, failures, t_start)


def _finish(
    doc: dict[str, Any], args: argparse.Namespace, arm_list: list[A.Arm], failures: list[str], t0: float
) -> int:
    doc["goals"] = report.goals(arm_list)
    doc["failures"] = failures
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    report.write(args.json, doc)
    print(report.summary(doc, arm_list, args.batches, platform.node()))
    print(f"JSON: {args.json}  ({doc['wall_s']:.0f} s)")
    if failures:
        return 1
    skipped = [a.name for a in arm_list if a.skipped and "cuda" in a.name]
    if args.require_cuda and (skipped or "CUDA" not in str(doc.get("ort_providers"))):
        print(f"--require-cuda: CUDA arms skipped: {skipped}")
        return 3
    return 0
