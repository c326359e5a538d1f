"""The one `recgen` command: export | worker | serve.

The serve, worker and export flags are generated from their config
dataclasses (recgen/config/), which also read RECGEN_<FLAG> variables and
validate themselves once; a bad setting becomes a usage error here. An
optional TOML config file (`--config FILE` / RECGEN_CONFIG, recgen/config/file.py)
gives what neither a flag nor a variable does. Each subcommand imports its half
lazily, so `recgen serve` and `recgen worker` never import torch. Logging (with
request ids and secrets redacted: recgen/logs.py) and tracing (recgen/tracing.py)
are configured here, once, and nowhere else; no module reads settings at import
time.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from recgen.config import ConfigError, ServeConfig, WorkerConfig
from recgen.config.common import CONFIG_HELP, GLOBALS, LOG_FORMATS
from recgen.config.file import ENV as CONFIG_ENV
from recgen.config.file import find_config, load_config
from recgen.config.flags import add_flags, from_args

ENV_NOTE = (
    "Every flag can also be set as RECGEN_<FLAG> (--max-seqs 8: RECGEN_MAX_SEQS=8; "
    "--no-llm: RECGEN_NO_LLM=1) or in a --config file; a flag given beats its variable, "
    "which beats the file, which beats the default."
)


def _configure_logging(level: str, fmt: str) -> None:
    from recgen.logs import JsonFormatter, PlainFormatter, RedactingFilter, RequestIdFilter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    # On the handler, so records of every logger (and library) pass them.
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # FAISS's loader reports at INFO every variant it tries ("Could not load library with AVX2
    # support due to: ModuleNotFoundError ..."): six lines per process that read like errors.
    # Its warnings and errors still show; DEBUG shows everything.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def config_classes() -> tuple[type, ...]:
    from recgen.config.export import ExportConfig

    return ServeConfig, WorkerConfig, ExportConfig


def build_parser(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> argparse.ArgumentParser:
    """The whole command line (tests/unit/test_deploy.py parses the manifests' args with it).
    `argv` is looked at only for --config FILE, whose values become defaults below flags and
    variables. Raises ConfigError for a config file that cannot be read or names no setting."""
    from recgen.config.export import ExportConfig

    env = os.environ if env is None else env
    path = find_config(argv or (), env)
    file = load_config(path, config_classes(), {g.dest for g in GLOBALS}) if path else {}
    kw: dict[str, Any] = {"file": file, "file_name": path, "env": env}

    parser = argparse.ArgumentParser(prog="recgen", description=__doc__.splitlines()[0])
    top = file.get("", {})
    for g in GLOBALS:
        default = env.get(g.env) or str(top.get(g.dest, "") or "") or g.default
        shown = " (default: %(default)s)" if default else ""
        parser.add_argument(g.option, default=default, choices=g.choices, help=g.help + shown)
    parser.add_argument("--config", default=path, metavar="FILE", help=CONFIG_HELP + " (RECGEN_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export", help="build a new model version from data", epilog=ENV_NOTE)
    add_flags(p, ExportConfig, **kw)
    p = sub.add_parser("worker", help="run one model worker process", epilog=ENV_NOTE)
    add_flags(p, WorkerConfig, **kw)
    p = sub.add_parser("serve", help="run the gateway and its workers", epilog=ENV_NOTE)
    add_flags(p, ServeConfig, group_title="model and local workers (as `recgen worker` takes them)", **kw)
    from recgen import importer, lifecycle

    lifecycle.add_parsers(sub)
    importer.add_parser(sub)
    # The global flags work after the subcommand too (`recgen serve --log-format json`): each
    # subcommand repeats them with SUPPRESS, so a flag it was not given leaves the global value.
    for p in sub.choices.values():
        for g in GLOBALS:
            p.add_argument(
                g.option, default=argparse.SUPPRESS, choices=g.choices, help="as before the subcommand"
            )
        p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help=CONFIG_HELP)
    return parser


def _setup_tracing(parser: argparse.ArgumentParser, service: str, endpoint: str) -> None:
    from recgen import tracing

    try:
        on = tracing.setup(service, endpoint or None)
    except RuntimeError as e:  # the SDK is not installed
        parser.error(str(e))
    if on:
        import atexit

        atexit.register(tracing.shutdown)  # spans still batched are sent before the process exits


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(argv)
    except ConfigError as e:
        print(f"recgen: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None  # as argparse ends a usage error
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
    # Child processes (serve's local workers, export's subprocesses) log and trace the same way:
    # they read these as their global flags' defaults. Not worker settings, so serve passes them on.
    for g in GLOBALS:
        os.environ[g.env] = getattr(args, g.dest)

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

        _setup_tracing(parser, "recgen-worker", args.otlp_endpoint)
        return run_worker(worker_cfg)
    if args.command in ("reload", "rollback", "versions"):
        from recgen import lifecycle

        return lifecycle.run(args)
    if args.command == "import":
        from recgen.importer import run_import

        return run_import(args)
    if args.command == "serve":
        from server.main import run_serve

        _setup_tracing(parser, "recgen-gateway", args.otlp_endpoint)
        # The local workers get every setting on their command line; a config file named by the
        # variable must not add per-process ones meant for remote workers ([worker] tls_cert).
        os.environ.pop(CONFIG_ENV, None)
        try:
            return run_serve(serve_cfg)
        except ConfigError as e:  # found when the gateway starts (a worker address's syntax)
            parser.error(str(e))
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
