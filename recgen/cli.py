"""The one `recgen` command: export | worker | serve.

The serve, worker and export flags are generated from their config
dataclasses (recgen/config/), which also read RECGEN_<FLAG> variables and
validate themselves once; a bad setting becomes a usage error here. Each
subcommand imports its half lazily, so `recgen serve` and `recgen worker`
never import torch. Logging is configured here, once, and nowhere else; no
module reads settings at import time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from recgen.config import ConfigError, ServeConfig, WorkerConfig
from recgen.config.flags import add_flags, from_args

ENV_NOTE = (
    "Every flag can also be set as RECGEN_<FLAG> (--max-seqs 8: RECGEN_MAX_SEQS=8; "
    "--no-llm: RECGEN_NO_LLM=1); a flag given beats its variable, which beats the default."
)
LOG_FORMATS = ("plain", "json")


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
    # FAISS's loader reports at INFO every variant it tries ("Could not load library with AVX2
    # support due to: ModuleNotFoundError ..."): six lines per process that read like errors.
    # Its warnings and errors still show; DEBUG shows everything.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _add_export(sub: argparse._SubParsersAction) -> None:
    from recgen.config.export import ExportConfig

    p = sub.add_parser("export", help="build a new model version from data", epilog=ENV_NOTE)
    add_flags(p, ExportConfig)


def _add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run one model worker process", epilog=ENV_NOTE)
    add_flags(p, WorkerConfig)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gateway and its workers", epilog=ENV_NOTE)
    add_flags(p, ServeConfig, group_title="model and local workers (as `recgen worker` takes them)")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line (tests/unit/test_deploy.py parses the manifests' args with it)."""
    parser = argparse.ArgumentParser(prog="recgen", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=os.environ.get("RECGEN_LOG_LEVEL") or "INFO")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default=os.environ.get("RECGEN_LOG_FORMAT") or "plain"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_export(sub)
    _add_worker(sub)
    _add_serve(sub)
    from recgen import importer, lifecycle

    lifecycle.add_parsers(sub)
    importer.add_parser(sub)
    # The global flags work after the subcommand too (`recgen serve --log-format json`): each
    # subcommand repeats them with SUPPRESS, so a flag it was not given leaves the global value.
    for p in sub.choices.values():
        p.add_argument("--log-level", default=argparse.SUPPRESS, help="as before the subcommand")
        p.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_format not in LOG_FORMATS:
        parser.error(f"RECGEN_LOG_FORMAT={args.log_format!r}: expected one of {', '.join(LOG_FORMATS)}")
    try:
        if args.command == "export":
            from recgen.config.export import ExportConfig

            export_cfg = from_args(ExportConfig, args)
        elif args.command == "worker":
            worker_cfg = from_args(WorkerConfig, args)
        elif args.command == "serve":
            serve_cfg = from_args(ServeConfig, args)
    except ConfigError as e:
        parser.error(str(e))
    _configure_logging(args.log_level, args.log_format)
    # Child processes (serve's local workers, export's subprocesses) log the same way: they read
    # these as their global flags' defaults. Not worker settings, so serve passes them on.
    os.environ["RECGEN_LOG_LEVEL"], os.environ["RECGEN_LOG_FORMAT"] = args.log_level, args.log_format

    if args.command == "export":
        from export.pipeline import run_export

        return run_export(export_cfg)
    if args.command == "worker":
        # Thread pools are sized per process before numpy / FAISS / ORT start
        # them, so N workers on C cores do not oversubscribe.
        threads = str(worker_cfg.threads or os.cpu_count() or 1)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = threads
        from worker.main import run_worker

        return run_worker(worker_cfg)
    if args.command in ("reload", "rollback", "versions"):
        from recgen import lifecycle

        return lifecycle.run(args)
    if args.command == "import":
        from recgen.importer import run_import

        return run_import(args)
    if args.command == "serve":
        from server.main import run_serve

        try:
            return run_serve(serve_cfg)
        except ConfigError as e:  # found when the gateway starts (a worker address's syntax)
            parser.error(str(e))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
