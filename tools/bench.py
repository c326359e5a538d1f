"""`make bench`: recgen's performance, each number next to its baseline measured in the same run.

    python -m tools.bench [--quick] [--models models] [--out docs/bench.json] [--plot docs/bench.png]

What it measures (docs/bench.md explains every number):

1. Generation through the public gRPC API (StreamRecommend, the real server
   `recgen serve`, real users' prompts): model-written tokens/s and time to
   the first model-written text at concurrency 1, 8, 32, against the same
   prompts decoded one request at a time by (a) transformers `generate` in
   PyTorch fp32 and (b) the served ONNX model without batching
   (`Generator.generate_alone`), same max new tokens, same thread count.
2. Recommend (explain=false) throughput at saturation and latency at half
   that load, against the empty Python gRPC echo server (tools.echo_server),
   with the same load generator (tools.loadtest) in its own process.
3. Retrieval at 100K and 1M items of a synthetic catalog fitted with iALS
   (tools.synthetic_catalog): recall@100 and queries/s of the index
   `export.index.build_index` chooses against exact search.
4. Memory: resident memory of the real worker processes, and of a process
   holding a 100K / 1M catalog's factors and index.

The server, the load generators and the baselines each run in their own
process; this one orchestrates, reads /proc and writes the JSON and the
plot. Thread counts are set explicitly everywhere. The full run takes about
15-25 minutes on 2 cores; --quick (100K catalog only, shorter loads) a few.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
PRIMER_FALLBACK = "You will enjoy"
NO_GPU = "no CUDA device / onnxruntime-gpu: GPU rows skipped"


@dataclass(frozen=True)
class Plan:
    quick: bool
    threads: int
    workers: int
    gen_levels: tuple[int, ...] = (1, 8, 32)
    gen_duration: tuple[float, ...] = (30.0, 30.0, 40.0)
    gen_warmup: tuple[float, ...] = (3.0, 5.0, 10.0)
    gen_users: int = 64
    ort_prompts: int = 24
    torch_prompts: int = 12
    max_new_tokens: int = 48  # the server's default (recgen serve --max-new-tokens)
    rec_concurrency: tuple[int, ...] = (8, 32)
    rec_duration: float = 10.0
    rec_warmup: float = 2.0
    retrieval_sizes: tuple[int, ...] = (100_000, 1_000_000)
    als_users: int = 50_000
    als_iterations: int = 6
    queries: int = 1000

    @staticmethod
    def make(quick: bool, threads: int, workers: int) -> Plan:
        if not quick:
            return Plan(False, threads, workers)
        return Plan(
            True,
            threads,
            workers,
            gen_duration=(10.0, 10.0, 15.0),
            gen_warmup=(2.0, 3.0, 6.0),
            gen_users=32,
            ort_prompts=8,
            torch_prompts=4,
            rec_duration=5.0,
            rec_warmup=1.0,
            retrieval_sizes=(100_000,),
            als_users=20_000,
            als_iterations=4,
            queries=500,
        )


# ----------------------------------------------------------------------------- machine


class LoadSampler:
    """The 1-minute load average every few seconds while the benchmark runs (a shared machine)."""

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._every = every
        self._t0 = time.time()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((round(time.time() - self._t0, 1), os.getloadavg()[0]))
            self._stop.wait(self._every)

    def start(self) -> LoadSampler:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=1)
        loads = [v for _, v in self.samples] or [os.getloadavg()[0]]
        return {
            "min": round(min(loads), 2),
            "mean": round(sum(loads) / len(loads), 2),
            "max": round(max(loads), 2),
            "samples": [(t, round(v, 2)) for t, v in self.samples],
        }

    def between(self, t0: float, t1: float) -> dict[str, float]:
        vals = [v for t, v in self.samples if t0 - self._t0 <= t <= t1 - self._t0] or [os.getloadavg()[0]]
        return {
            "min": round(min(vals), 2),
            "mean": round(sum(vals) / len(vals), 2),
            "max": round(max(vals), 2),
        }


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    except (OSError, IndexError, ValueError):
        pass
    versions = {}
    for mod in ("onnxruntime", "faiss", "grpc", "numpy", "tokenizers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a version string is informational
            versions[mod] = "?"
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_gb": round(mem_kb / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def gpu_status() -> dict[str, Any]:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    has_smi = shutil.which("nvidia-smi") is not None
    cuda = "CUDAExecutionProvider" in providers and has_smi
    return {"ort_providers": providers, "nvidia_smi": has_smi, "cuda": cuda, "note": "" if cuda else NO_GPU}


# ----------------------------------------------------------------------------- processes


def _sub_env(threads: int, root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_py(args: list[str], *, threads: int, timeout: float, log: Path) -> None:
    """python -m ... in its own process (own memory, own thread pools); output to `log`."""
    cmd = [sys.executable, *args]
    LOG.info("$ %s", " ".join(cmd))
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        subprocess.run(
            cmd,
            cwd=ROOT,
            env=_sub_env(threads),
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=True,
        )


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    target: str
    start_s: float
    workers: list[tuple[int, str]]  # (pid, listen address)


@contextmanager
def recgen_server(
    models: str, workers: int, work: Path, timeout: float = 600.0, root: Path = ROOT
) -> Iterator[Server]:
    """`recgen serve` on a free port with a fresh state store; always stopped (SIGTERM, then SIGKILL of
    its process group). root: the source tree it runs from (another checkout for an A/B run)."""
    from tools.memory import children, cmdline

    out, err = work / "serve.out", work / "serve.log"
    cmd = [
        sys.executable,
        "-m",
        "recgen.cli",
        "--log-level",
        "WARNING",
        "serve",
        "--models",
        models,
        "--port",
        "0",
        "--state",
        str(work / "state.db"),
        "--workers",
        str(workers),
    ]
    LOG.info("$ %s", " ".join(cmd))
    t0 = time.perf_counter()
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=_sub_env(1, root),
            stdout=fo,
            stderr=fe,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        target = None
        while time.perf_counter() - t0 < timeout:
            m = re.search(r"serving on (\S+)", out.read_text(errors="replace"))
            if m:
                target = m.group(1)
                break
            if proc.poll() is not None:
                raise RuntimeError(f"recgen serve exited with {proc.returncode}: {err.read_text()[-2000:]}")
            time.sleep(0.2)
        if target is None:
            raise TimeoutError(f"recgen serve not ready in {timeout:.0f} s")
        start_s = time.perf_counter() - t0
        ws = []
        for pid in children(proc.pid):
            argv = cmdline(pid)
            if "worker" in argv and "--listen" in argv:
                ws.append((pid, argv[argv.index("--listen") + 1]))
        yield Server(proc, target, start_s, ws)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ----------------------------------------------------------------------------- phases


def phase_server(plan: Plan, models: str, wheels: Path, work: Path, load: LoadSampler) -> dict[str, Any]:
    """One `recgen serve`: worker memory, Recommend load vs echo, generation at each concurrency."""
    from tokenizers import Tokenizer

    from recgen.repository import ModelRepository
    from tools.gen_bench import movielens_users, seed_users, server_level, stats_delta, worker_stats
    from tools.memory import proc_cpu_s, proc_mem

    try:
        from recgen.core.prompt import RESPONSE_PRIMER as primer
    except ImportError:  # pragma: no cover
        primer = PRIMER_FALLBACK
    mv = ModelRepository(models).open(None, verify=False)
    llm_dir = mv.path / "llm"
    tok = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
    users = movielens_users(wheels, plan.gen_users)
    res: dict[str, Any] = {
        "model_version": mv.name,
        "llm_precision": json.loads((llm_dir / "llm.json").read_text())["precision"],
    }
    with recgen_server(models, plan.workers, work) as srv:
        res["server_start_s"] = round(srv.start_s, 1)
        res["target"] = srv.target
        res["workers"] = [{"pid": p, "address": a} for p, a in srv.workers]
        res["memory_idle"] = {
            "gateway": proc_mem(srv.proc.pid),
            "workers": [proc_mem(p) for p, _ in srv.workers],
        }
        res["seed"] = asyncio.run(seed_users(srv.target, users))
        LOG.info("seeded %s", res["seed"])
        # 2. Recommend (explain=false) against the echo server, load generator in its own process.
        t = time.time()
        server_pids = {"gateway": srv.proc.pid, **{f"worker{i}": p for i, (p, _) in enumerate(srv.workers)}}
        res["recommend"] = recommend_vs_echo(plan, srv.target, len(users), work, server_pids)
        res["recommend"]["host_load"] = load.between(t, time.time())
        # 1. Generation at each concurrency.
        addrs = [a for _, a in srv.workers]
        pids = {"gateway": srv.proc.pid, **{f"worker{i}": p for i, (p, _) in enumerate(srv.workers)}}
        levels = []
        all_records = []
        for c, dur, warm in zip(plan.gen_levels, plan.gen_duration, plan.gen_warmup, strict=True):
            t = time.time()
            s0 = asyncio.run(worker_stats(addrs))
            t_s0 = time.perf_counter()
            cpu0 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
            rep, records = asyncio.run(
                server_level(
                    srv.target,
                    [u.user_id for u in users],
                    c,
                    duration=dur,
                    warmup=warm,
                    tokenizer=tok,
                    primer=primer,
                )
            )
            s1 = asyncio.run(worker_stats(addrs))
            cpu1 = {name: proc_cpu_s(pid) for name, pid in pids.items()}
            rep["workers"] = stats_delta(s0, s1)
            rep["workers"]["seconds"] = round(time.perf_counter() - t_s0, 2)
            # CPU the server's processes used over the same span: tokens per CPU second compare with the
            # baselines' even when other jobs take cores from this run.
            used = {name: round(cpu1[name] - cpu0[name], 2) for name in pids}
            rep["server_cpu_s"] = used
            rep["server_cores_used"] = round(sum(used.values()) / rep["workers"]["seconds"], 2)
            rep["decoded_tokens_per_cpu_s"] = round(
                rep["workers"]["total"]["llm_tokens_generated"] / max(sum(used.values()), 1e-9), 2
            )
            rep["workers"]["decoded_tokens_per_s"] = round(
                rep["workers"]["total"]["llm_tokens_generated"] / rep["workers"]["seconds"], 1
            )
            rep["host_load_window"] = load.between(t, time.time())
            levels.append(rep)
            all_records.append((c, records))
            LOG.info(
                "generation c=%d: %.1f tok/s, first text p50 %s ms",
                c,
                rep["tokens_per_s"],
                (rep["first_generated_ms"] or {}).get("p50"),
            )
            time.sleep(1.0)
        res["generation"] = levels
        res["memory_after_load"] = {
            "gateway": proc_mem(srv.proc.pid),
            "workers": [proc_mem(p) for p, _ in srv.workers],
        }
    # What the server showed each user (items, and at concurrency 1 the text), for the baselines' prompts.
    ranked: dict[str, list[str]] = {}
    texts_c1: dict[str, tuple[str, str]] = {}
    for c, records in all_records:
        for r in records:
            if r.items and r.user_id not in ranked:
                ranked[r.user_id] = r.items
            if c == 1 and r.status == "OK" and r.t_end and r.user_id not in texts_c1:
                texts_c1[r.user_id] = (r.text, r.text_status)
    res["_ranked"] = ranked
    res["_texts_c1"] = texts_c1
    res["_users"] = users
    res["_llm_dir"] = str(llm_dir)
    res["primer"] = primer
    return res


def recommend_vs_echo(
    plan: Plan, target: str, users: int, work: Path, server_pids: dict[str, int]
) -> dict[str, Any]:
    """Closed loop at each concurrency to find each server's saturation, then an open loop at half of
    it. recgen's points run one load process each, so the CPU its processes used per request is known."""
    from tools.loadtest import Report
    from tools.memory import proc_cpu_s

    def load(args: list[str], name: str) -> list[Report]:
        out = work / f"loadtest-{name}.json"
        run_py(
            [
                "-m",
                "tools.loadtest",
                *args,
                "--users",
                str(users),
                "--duration",
                str(plan.rec_duration),
                "--warmup",
                str(plan.rec_warmup),
                "--timeout",
                "5",
                "--json",
                str(out),
            ],
            threads=1,
            timeout=600,
            log=work / "loadtest.log",
        )
        return [Report.from_dict(d) for d in json.loads(out.read_text())["reports"]]

    closed: list[Report] = []
    cpu_per_req: dict[int, dict[str, float]] = {}
    for c in plan.rec_concurrency:
        c0 = {k: proc_cpu_s(p) for k, p in server_pids.items()}
        rep = load(["--target", target, "--name", "recgen", "--concurrency", str(c)], f"closed-recgen-{c}")[0]
        c1 = {k: proc_cpu_s(p) for k, p in server_pids.items()}
        # Warm-up requests cost CPU too: count them at the measured rate.
        n = rep.throughput * (plan.rec_duration + plan.rec_warmup)
        cpu_per_req[c] = {k: round(1000.0 * (c1[k] - c0[k]) / max(n, 1.0), 3) for k in server_pids}
        closed.append(rep)
    closed += load(["--echo", "--sweep-concurrency", ",".join(map(str, plan.rec_concurrency))], "closed-echo")
    out: dict[str, Any] = {}
    for name in ("recgen", "echo"):
        reps = [r for r in closed if r.name == name]
        best = max(reps, key=lambda r: r.throughput)
        half = round(best.throughput / 2.0, 1)
        args = ["--target", target, "--name", "recgen"] if name == "recgen" else ["--echo"]
        opened = load([*args, "--rate", str(half)], f"open-{name}")[0]
        out[name] = {
            "closed": [_rep_summary(r) for r in reps],
            "saturation_per_s": best.throughput,
            "saturation_concurrency": best.concurrency,
            "half_load": _rep_summary(opened),
        }
    out["recgen"]["cpu_ms_per_request"] = {str(c): v for c, v in cpu_per_req.items()}
    out["ratio_saturation"] = round(out["recgen"]["saturation_per_s"] / out["echo"]["saturation_per_s"], 3)
    return out


def _rep_summary(r: Any) -> dict[str, Any]:
    lat = r.latency_ms or {}
    return {
        "mode": r.mode,
        "concurrency": r.concurrency,
        "rate": r.rate,
        "ok_per_s": r.throughput,
        "p50_ms": lat.get("p50"),
        "p99_ms": lat.get("p99"),
        "errors": r.errors,
        "status": r.status_counts,
        "client_cpu": r.client_cpu,
        "host_load": r.host_load,
    }


def phase_baselines(plan: Plan, srv: dict[str, Any], wheels: Path, work: Path) -> dict[str, Any]:
    """The same prompts, one at a time: ONNX without batching, then transformers generate (fp32)."""
    from recgen.repository import ModelRepository
    from tools.gen_bench import build_prompts

    llm_dir = Path(srv["_llm_dir"])
    llm_cfg = json.loads((llm_dir / "llm.json").read_text())
    mv = ModelRepository(str(llm_dir.parent.parent)).open(llm_dir.parent.name, verify=False)
    catalog = {it.item_id: it.title for it in mv.catalog()}
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
    primer = srv["primer"]
    same = compared = 0
    for p, text in zip(prompts, out["onnx_alone"]["texts"], strict=False):
        got = srv["_texts_c1"].get(p["user_id"])
        if got is None or got[1] != "TEXT_STATUS_COMPLETE":
            continue
        compared += 1
        same += got[0].strip() == (primer + text).strip()
    out["server_vs_alone_texts"] = {"compared": compared, "identical": same}
    return out


def phase_retrieval(plan: Plan, work: Path) -> dict[str, Any]:
    out_json = work / "retrieval.json"
    save = work / "catalogs"
    run_py(
        [
            "-m",
            "tools.retrieval_bench",
            "--sizes",
            ",".join(str(s) for s in plan.retrieval_sizes),
            "--users",
            str(plan.als_users),
            "--iterations",
            str(plan.als_iterations),
            "--queries",
            str(plan.queries),
            "--threads",
            str(plan.threads),
            "--out",
            str(out_json),
            "--save-dir",
            str(save),
        ],
        threads=plan.threads,
        timeout=2400,
        log=work / "retrieval.log",
    )
    res = json.loads(out_json.read_text())
    res["memory"] = {}
    for row in res["rows"]:
        d = row.get("saved_to")
        if not d:
            continue
        p = subprocess.run(
            [sys.executable, "-m", "tools.memory", "hold", "--dir", d],
            cwd=ROOT,
            env=_sub_env(1),
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        res["memory"][row["name"]] = json.loads(p.stdout.strip().splitlines()[-1])
        shutil.rmtree(d, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------- summary


def _get(d: Any, *path: Any) -> Any:
    """d[p0][p1]... or None where a key or index is missing."""
    for p in path:
        try:
            d = d[p]
        except (KeyError, IndexError, TypeError):
            return None
    return d


def ratios(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The table of ratios: each measured number over its same-run baseline, with the goal."""
    rows: list[dict[str, Any]] = []

    def add(metric: str, value: Any, baseline: Any, goal: str, ok: Callable[[float], bool] | None) -> None:
        ratio = round(value / baseline, 2) if value is not None and baseline else None
        rows.append(
            {
                "metric": metric,
                "value": value,
                "baseline": baseline,
                "ratio": ratio,
                "goal": goal,
                "met": None if ratio is None or ok is None else bool(ok(ratio)),
            }
        )

    gen = {g["concurrency"]: g for g in _get(doc, "server", "generation") or []}
    torch_tps = _get(doc, "baselines", "pytorch", "text_tokens_per_s")
    ort_tps = _get(doc, "baselines", "onnx_alone", "text_tokens_per_s")
    for c, g in sorted(gen.items()):
        add(
            f"gen tokens/s @{c} vs PyTorch generate fp32 serial",
            g["tokens_per_s"],
            torch_tps,
            ">= 6x at 32" if c == 32 else "",
            (lambda r: r >= 6.0) if c == 32 else None,
        )
        add(
            f"gen tokens/s @{c} vs ONNX int8 unbatched serial",
            g["tokens_per_s"],
            ort_tps,
            ">= 3x at 32" if c == 32 else "",
            (lambda r: r >= 3.0) if c == 32 else None,
        )
    top = gen.get(max(gen)) if gen else None
    for key, label in (("pytorch", "PyTorch fp32"), ("onnx_alone", "ONNX int8 unbatched")):
        base = _get(doc, "baselines", key, "tokens_per_cpu_s")
        if top and base:
            add(
                f"gen tokens per CPU-second @{top['concurrency']} vs {label} (info: robust to other jobs)",
                top.get("decoded_tokens_per_cpu_s"),
                base,
                "",
                None,
            )
    if 1 in gen and 32 in gen:
        for q in ("p50", "p99"):
            a = _get(gen[32], "first_generated_ms", q)
            b = _get(gen[1], "first_generated_ms", q)
            add(f"time to first model text {q} @32 vs @1 (ms)", a, b, "<= 5x", lambda r: r <= 5.0)
    rec = _get(doc, "server", "recommend")
    if rec:
        add(
            "Recommend saturation (ok/s) vs echo server",
            rec["recgen"]["saturation_per_s"],
            rec["echo"]["saturation_per_s"],
            ">= 0.5x",
            lambda r: r >= 0.5,
        )
        add(
            "Recommend p50 at half load vs echo (ms)",
            rec["recgen"]["half_load"]["p50_ms"],
            rec["echo"]["half_load"]["p50_ms"],
            "",
            None,
        )
        add(
            "Recommend p99 at half load vs echo (ms)",
            rec["recgen"]["half_load"]["p99_ms"],
            rec["echo"]["half_load"]["p99_ms"],
            "",
            None,
        )
    for row in _get(doc, "retrieval", "rows") or []:
        if row.get("chosen_by_policy") is False:
            continue  # a reference measurement (HNSW where the policy picks exact), in the JSON only
        is_1m = row["items"] >= 1_000_000
        goal_ok = row["recall_at_100"] >= 0.95

        def five_times(r: float, g: bool = goal_ok) -> bool:
            return g and r >= 5.0

        for kind in ("batch1", "batched"):
            add(
                f"retrieval {row['name']} {row['index']} q/s ({kind}) vs exact; "
                f"recall@100 {row['recall_at_100']:.3f}",
                row[f"index_qps_{kind}"],
                row[f"exact_qps_{kind}"],
                ">= 5x with recall >= 0.95" if is_1m else "",
                five_times if is_1m else None,
            )
    return rows


def markdown(doc: dict[str, Any]) -> str:
    lines = ["| metric | recgen | baseline | ratio | goal | met |", "|---|---:|---:|---:|---|---|"]
    for r in doc.get("ratios", []):
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(
            f"| {r['metric']} | {_fmt(r['value'])} | {_fmt(r['baseline'])} | "
            f"{_fmt(r['ratio'])}{'x' if r['ratio'] is not None else ''} | {r['goal']} | {met} |"
        )
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    m = doc.get("machine", {})
    kind = "quick" if doc.get("quick") else "full"
    gpu_note = _get(doc, "gpu", "note") or "GPU present"
    fig.suptitle(
        f"recgen bench ({kind}) - {m.get('nproc')} cores {m.get('cpu_model')}, "
        f"load avg {_get(doc, 'load', 'mean')} (mean); {gpu_note}",
        fontsize=10,
    )
    gen = _get(doc, "server", "generation") or []
    ax = axes[0][0]
    if gen:
        cs = [g["concurrency"] for g in gen]
        ax.bar(
            range(len(cs)),
            [g["tokens_per_s"] for g in gen],
            color="tab:blue",
            label="recgen (gRPC, int8)",
        )
        for key, color, label in (
            ("pytorch", "tab:red", "PyTorch generate fp32, serial"),
            ("onnx_alone", "tab:orange", "ONNX int8 unbatched, serial"),
        ):
            v = _get(doc, "baselines", key, "text_tokens_per_s")
            if v:
                ax.axhline(v, color=color, ls="--", label=f"{label}: {v:.1f}")
        ax.set_xticks(range(len(cs)), [str(c) for c in cs])
        ax.set_xlabel("concurrent StreamRecommend callers")
        ax.set_ylabel("model-written tokens/s")
        ax.set_title("generation throughput", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[0][1]
    if gen:
        cs = [g["concurrency"] for g in gen]
        for q, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(
                cs,
                [_get(g, "first_generated_ms", q) for g in gen],
                style,
                color="tab:green",
                label=f"first model text {q}",
            )
            ax.plot(
                cs, [_get(g, "first_items_ms", q) for g in gen], style, color="tab:grey", label=f"items {q}"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent callers")
        ax.set_ylabel("ms from send")
        ax.set_title("time to first text (StreamRecommend)", fontsize=10)
        ax.legend(fontsize=8)
    ax = axes[1][0]
    rec = _get(doc, "server", "recommend")
    if rec:
        names = ["recgen", "echo"]
        sat = [rec[n]["saturation_per_s"] for n in names]
        ax.bar(names, sat, color=["tab:blue", "tab:grey"])
        for i, n in enumerate(names):
            h = rec[n]["half_load"]
            ax.annotate(
                f"{sat[i]:.0f} ok/s\nat half load:\np50 {h['p50_ms']:.1f} ms\np99 {h['p99_ms']:.1f} ms",
                (i, sat[i]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_ylim(0, max(sat) * 1.35)
        ax.set_ylabel("Recommend (explain=false) ok/s at saturation")
        ax.set_title(f"Recommend vs empty echo server: {rec['ratio_saturation']:.2f}x", fontsize=10)
    ax = axes[1][1]
    rows = _get(doc, "retrieval", "rows") or []
    for row in rows:
        color = "tab:purple" if row["items"] >= 1_000_000 else "tab:cyan"
        curve = row.get("hnsw_curve") or []
        if curve:
            ax.plot(
                [c["recall_at_100"] for c in curve],
                [c["qps_batched"] for c in curve],
                ".-",
                color=color,
                alpha=0.6,
                label=f"{row['name'].split(' ')[0]} HNSW (MIPS lift) efSearch sweep",
            )
        if row.get("chosen_by_policy") is False:
            continue
        ax.plot([1.0], [row["exact_qps_batched"]], "x", color=color, ms=10, label=f"{row['name']} exact")
        ax.plot(
            [row["recall_at_100"]],
            [row["index_qps_batched"]],
            "o",
            mfc="none",
            color=color,
            ms=12,
            label=f"{row['name']} chosen by build_index: {row['index']}",
        )
        nb = row.get("norm_bounded") or []
        if nb:
            ax.plot(
                [x["recall_at_100"] for x in nb],
                [x["qps_batched"] for x in nb],
                "*",
                color=color,
                ms=9,
                label=f"{row['name']} norm-bounded exact, head-share sweep",
            )
    if rows:
        ax.axvline(0.95, color="k", lw=0.6, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("recall@100 (held-out users)")
        ax.set_ylabel("queries/s (batches of 64)")
        ax.set_title("retrieval: chosen index vs exact", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100K catalog only, shorter loads (a few minutes)")
    p.add_argument(
        "--models", default="models", help="model repository (the newest complete version is used)"
    )
    p.add_argument("--wheels", default=".cache/wheels")
    p.add_argument("--workers", type=int, default=2, help="recgen serve --workers (default 2)")
    p.add_argument("--threads", type=int, default=0, help="threads of the baselines and FAISS (0: cores)")
    p.add_argument("--out", default="docs/bench.json")
    p.add_argument("--plot", default="docs/bench.png")
    p.add_argument("--skip", default="", help="comma list of phases to skip: server,baselines,retrieval")
    p.add_argument("--work", default="", help="keep intermediate files here (default: a temp dir)")
    p.add_argument(
        "--from-json", default="", help="measure nothing: redo the table and the plot from this JSON"
    )
    args = p.parse_args(argv)
    if args.from_json:
        old: dict[str, Any] = json.loads(Path(args.from_json).read_text())
        old["ratios"] = ratios(old)
        old["summary_markdown"] = markdown(old)
        Path(args.out).write_text(json.dumps(old, indent=2, default=str) + "\n")
        if args.plot:
            plot(old, Path(args.plot))
        print(old["summary_markdown"])
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    threads = args.threads or len(os.sched_getaffinity(0))
    plan = Plan.make(args.quick, threads, args.workers)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    work = Path(args.work or tempfile.mkdtemp(prefix="recgen-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    load = LoadSampler().start()
    t0 = time.perf_counter()
    doc: dict[str, Any] = {
        "quick": args.quick,
        "command": "python -m tools.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "gpu": gpu_status(),
        "plan": {k: v for k, v in plan.__dict__.items()},
        "errors": {},
    }
    if doc["gpu"]["note"]:
        print(doc["gpu"]["note"], flush=True)
    wheels = Path(args.wheels)
    srv: dict[str, Any] | None = None
    phases: list[tuple[str, Callable[[], Any]]] = [
        ("server", lambda: phase_server(plan, args.models, wheels, work, load)),
        ("baselines", lambda: phase_baselines(plan, srv, wheels, work) if srv else None),
        ("retrieval", lambda: phase_retrieval(plan, work)),
    ]
    for name, fn in phases:
        if name in skip:
            continue
        t = time.time()
        LOG.info("phase %s ...", name)
        try:
            result = fn()
            if result is not None:
                if name == "server":
                    srv = result
                    doc[name] = {k: v for k, v in result.items() if not k.startswith("_")}
                else:
                    doc[name] = result
        except Exception as e:  # noqa: BLE001 - record, go on with the other phases
            LOG.error("phase %s failed: %s", name, e)
            doc["errors"][name] = "".join(traceback.format_exception(e))[-4000:]
        doc.setdefault("phase_seconds", {})[name] = round(time.time() - t, 1)
        doc.setdefault("phase_load", {})[name] = load.between(t, time.time())
    doc["load"] = load.stop()
    doc["total_s"] = round(time.perf_counter() - t0, 1)
    doc["ratios"] = ratios(doc)
    doc["summary_markdown"] = markdown(doc)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if args.plot:
        plot(doc, Path(args.plot))
    print(doc["summary_markdown"])
    print(
        f"\n{doc['machine']['nproc']} cores, {doc['machine']['cpu_model']}; load average during the run "
        f"min {doc['load']['min']} / mean {doc['load']['mean']} / max {doc['load']['max']}; "
        f"{doc['total_s']:.0f} s; JSON {args.out}, plot {args.plot}; work files {work}"
    )
    if doc["gpu"]["note"]:
        print(doc["gpu"]["note"])
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
