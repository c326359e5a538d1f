"""Bench phase "server": one real `recgen serve`; its workers' memory, Recommend against the echo
server (each load run in its own process), and generation through StreamRecommend at each
concurrency, with the CPU the server's processes used."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

from tools.bench.machine import LoadSampler
from tools.bench.plan import Plan, run_py, sub_env
from tools.harness.procfs import cpu_s, proc_mem
from tools.harness.procs import ROOT, Gateway

LOG = logging.getLogger("bench")


def recgen_server(models: str, workers: int, work: Path, root: Path = ROOT) -> Gateway:
    """`recgen serve` on a free port with a fresh state store, logs in `work` (not started).
    root: the source tree it runs from (another checkout for an A/B run)."""
    return Gateway(
        models,
        work / "state.db",
        "--workers",
        str(workers),
        cli_args=("--log-level", "WARNING"),
        log_dir=work,
        root=root,
        environ=sub_env(1, root),
    )


def phase_server(plan: Plan, models: str, wheels: Path, work: Path, load: LoadSampler) -> dict[str, Any]:
    """One `recgen serve`: worker memory, Recommend load vs echo, generation at each concurrency."""
    from tokenizers import Tokenizer

    from recgen.repository import ModelRepository
    from tools.gen_bench.streams import server_level, stats_delta, worker_stats
    from tools.gen_bench.users import movielens_users, seed_users

    mv = ModelRepository(models).open(None, verify=False)
    llm_dir = mv.path / "llm"
    tok = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
    users = movielens_users(wheels, plan.gen_users)
    res: dict[str, Any] = {
        "model_version": mv.name,
        "llm_precision": json.loads((llm_dir / "llm.json").read_text())["precision"],
    }
    with recgen_server(models, plan.workers, work).start(timeout=600.0) as srv:
        srv_workers = srv.worker_addresses()
        res["server_start_s"] = round(srv.started_s, 1)
        res["target"] = srv.target
        res["workers"] = [{"pid": p, "address": a} for p, a in srv_workers]
        res["memory_idle"] = {
            "gateway": proc_mem(srv.pid),
            "workers": [proc_mem(p) for p, _ in srv_workers],
        }
        res["seed"] = asyncio.run(seed_users(srv.target, users))
        LOG.info("seeded %s", res["seed"])
        # 2. Recommend (explain=false) against the echo server, load generator in its own process.
        t = time.time()
        server_pids = {"gateway": srv.pid, **{f"worker{i}": p for i, (p, _) in enumerate(srv_workers)}}
        res["recommend"] = recommend_vs_echo(plan, srv.target, len(users), work, server_pids)
        res["recommend"]["host_load"] = load.between(t, time.time())
        # 1. Generation at each concurrency.
        addrs = [a for _, a in srv_workers]
        pids = {"gateway": srv.pid, **{f"worker{i}": p for i, (p, _) in enumerate(srv_workers)}}
        levels = []
        all_records = []
        for c, dur, warm in zip(plan.gen_levels, plan.gen_duration, plan.gen_warmup, strict=True):
            t = time.time()
            s0 = asyncio.run(worker_stats(addrs))
            t_s0 = time.perf_counter()
            cpu0 = {name: cpu_s(pid) for name, pid in pids.items()}
            rep, records = asyncio.run(
                server_level(
                    srv.target,
                    [u.user_id for u in users],
                    c,
                    duration=dur,
                    warmup=warm,
                    tokenizer=tok,
                )
            )
            s1 = asyncio.run(worker_stats(addrs))
            cpu1 = {name: cpu_s(pid) for name, pid in pids.items()}
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
            "gateway": proc_mem(srv.pid),
            "workers": [proc_mem(p) for p, _ in srv_workers],
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
    return res


def recommend_vs_echo(
    plan: Plan, target: str, users: int, work: Path, server_pids: dict[str, int]
) -> dict[str, Any]:
    """Closed loop at each concurrency to find each server's saturation, then an open loop at half of
    it. recgen's points run one load process each, so the CPU its processes used per request is known."""
    from tools.loadtest import Report

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
        c0 = {k: cpu_s(p) for k, p in server_pids.items()}
        rep = load(["--target", target, "--name", "recgen", "--concurrency", str(c)], f"closed-recgen-{c}")[0]
        c1 = {k: cpu_s(p) for k, p in server_pids.items()}
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
