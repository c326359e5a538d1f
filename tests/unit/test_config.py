"""Typed configuration (recgen/config/): flags and RECGEN_* variables onto one set of fields.

Precedence is flag, then variable, then the dataclass default; a variable that
does not parse is an error naming it; contradicting settings are usage errors;
and `recgen serve`'s local-worker command line gives back, through the worker's
own parser, exactly the WorkerConfig it was written from.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from recgen import cli
from recgen.config import ConfigError, ServeConfig, WorkerConfig
from recgen.config.common import GLOBALS
from recgen.config.export import ExportConfig
from recgen.config.flags import env_names, from_args
from server.workers import Worker, local_worker_argv

CONFIGS = {"serve": ServeConfig, "worker": WorkerConfig, "export": ExportConfig}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RECGEN_* variable of the shell running the tests leaks into these."""
    names = env_names(ServeConfig) | env_names(WorkerConfig) | env_names(ExportConfig)
    for name in names | {g.env for g in GLOBALS} | {"RECGEN_CONFIG"}:
        # Set, then deleted: monkeypatch then also removes what a test (cli.main) sets itself.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def config(*argv: str):
    """The config `recgen ARGV` would run with (ConfigError as the CLI would see it)."""
    args = cli.build_parser().parse_args(list(argv))
    return from_args(CONFIGS[args.command], args)


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err


# ---------------------------------------------------------------- precedence


def test_defaults_come_from_the_dataclasses() -> None:
    serve = config("serve", "--models", "m")
    assert serve == ServeConfig(worker=WorkerConfig(models="m"))
    assert (serve.port, serve.state, serve.worker.max_seqs, serve.worker.max_batch) == (
        50051,
        "var/state.db",
        32,
        64,
    )
    worker = config("worker", "--models", "m", "--listen", "unix:/tmp/w.sock")
    assert worker == WorkerConfig(models="m", listen="unix:/tmp/w.sock")
    export = config("export", "--models", "m")
    assert export == ExportConfig(models="m")
    assert export.wheels_dir == Path(".cache/wheels") and export.with_llm and export.progress


def test_flag_beats_variable_beats_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECGEN_PORT", "6000")
    monkeypatch.setenv("RECGEN_MAX_SEQS", "8")
    monkeypatch.setenv("RECGEN_STATE", "/var/lib/recgen/state.db")
    cfg = config("serve", "--models", "m", "--port", "7000")
    assert cfg.port == 7000  # flag
    assert cfg.worker.max_seqs == 8  # variable
    assert cfg.state == "/var/lib/recgen/state.db"
    assert cfg.host == "127.0.0.1"  # default
    assert config("serve", "--models", "m", "--max-seqs", "4").worker.max_seqs == 4


def test_a_variable_gives_a_required_flag() -> None:
    with pytest.raises(SystemExit):
        config("serve")
    os.environ["RECGEN_MODELS"] = "/models"  # removed again by clean_env
    assert config("serve").models == "/models"
    assert config("serve", "--models", "elsewhere").models == "elsewhere"


def test_boolean_repeated_and_renamed_flags_from_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECGEN_NO_LLM", "yes")
    monkeypatch.setenv("RECGEN_QUIET", "1")
    monkeypatch.setenv("RECGEN_WHEELS", "/wheels")
    monkeypatch.setenv("RECGEN_MAX_MEMORY", "512M")
    export = config("export", "--models", "m")
    assert not export.with_llm and not export.progress and export.with_encoder
    assert export.wheels_dir == Path("/wheels") and export.max_memory == 512 << 20

    monkeypatch.setenv("RECGEN_WORKER_ADDRESS", "unix:/run/a.sock,unix:/run/b.sock")
    monkeypatch.setenv("RECGEN_LOG_USER_IDS", "off")
    serve = config("serve", "--models", "m")
    assert serve.worker_address == ("unix:/run/a.sock,unix:/run/b.sock",) and not serve.log_user_ids
    # A repeated flag replaces the variable's list, it does not add to it.
    serve = config("serve", "--models", "m", "--worker-address", "unix:/c", "--worker-address", "unix:/d")
    assert serve.worker_address == ("unix:/c", "unix:/d")

    monkeypatch.setenv("RECGEN_SHARD", "1/3")
    worker = config("worker", "--models", "m", "--listen", "unix:/w")
    assert (worker.shard_index, worker.shard_count) == (1, 3)


# ---------------------------------------------------------------- variables that do not parse


@pytest.mark.parametrize(
    ("name", "value", "argv", "says"),
    [
        ("RECGEN_PORT", "http", ["serve", "--models", "m"], "expected an integer"),
        ("RECGEN_GRACE", "soon", ["serve", "--models", "m"], "expected a number"),
        ("RECGEN_WORKER_INSECURE", "maybe", ["serve", "--models", "m"], "expected 1/0, true/false"),
        ("RECGEN_SYNCHRONOUS", "OFF", ["serve", "--models", "m"], "expected one of FULL, NORMAL"),
        ("RECGEN_DEVICE", "tpu", ["worker", "--models", "m", "--listen", "unix:/w"], "cpu, cuda"),
        ("RECGEN_SHARD", "2/2", ["worker", "--models", "m", "--listen", "unix:/w"], "need 0 <= I < N"),
        ("RECGEN_MAX_MEMORY", "lots", ["export", "--models", "m"], "expected a size like 8G"),
    ],
)
def test_a_bad_variable_is_an_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    argv: list[str],
    says: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as e:
        config(*argv)
    assert f"{name}={value!r}" in str(e.value) and says in str(e.value)
    assert f"{name}={value!r}" in usage_error(capsys, *argv)


def test_a_bad_variable_matters_only_where_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECGEN_SEED", "not-a-number")  # export's
    monkeypatch.setenv("RECGEN_PORT", "http")
    assert config("worker", "--models", "m", "--listen", "unix:/w").models == "m"
    assert config("serve", "--models", "m", "--port", "1").port == 1  # the flag wins


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["serve", "--models", "m", "--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["serve", "--models", "m", "--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
        (
            ["serve", "--models", "m", "--worker-tls-cert", "c", "--worker-tls-key", "k"],
            "needs --worker-tls-ca",
        ),
        (["serve", "--models", "m", "--worker-tls-ca", "ca", "--worker-insecure"], "contradict"),
        (["serve", "--models", "m", "--worker-address", "10.0.0.5:7000"], "need --worker-tls-ca"),
        (["serve", "--models", "m", "--workers", "1", "--shards", "2"], "every shard needs a worker"),
        (["serve", "--models", "m", "--max-connection-age-s", "-1"], "must be >= 0"),
        (["serve", "--models", "m", "--max-batch", "512"], "--max-queue 256 < --max-batch 512"),
        (["serve", "--models", "m", "--max-seqs", "0"], "--max-seqs must be >= 1"),
        (["worker", "--models", "m", "--listen", "unix:/w", "--tls-key", "k"], "go together"),
        (["worker", "--models", "m", "--listen", "0.0.0.0:7000"], "needs --tls-cert/--tls-key"),
        (
            ["worker", "--models", "m", "--listen", "unix:/w", "--tls-cert", "c", "--tls-key", "k"],
            "a unix socket is protected by its permissions",
        ),
        (["export", "--models", "m", "--interactions", "i.csv"], "--interactions and --items go together"),
        (["export", "--models", "m", "--item-ids", "ids.txt"], "--item-ids goes with --factors-from"),
    ],
)
def test_contradicting_settings_are_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(ConfigError, match="") as e:
        config(*argv)
    assert says in str(e.value)
    assert says in usage_error(capsys, *argv)


def test_a_bad_worker_address_is_a_usage_error_before_anything_starts(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_configure_logging", lambda level, fmt: None)  # leave pytest's alone
    argv = ["serve", "--models", str(tmp_path), "--worker-insecure", "--worker-address", "unix:/w,nohost"]
    err = usage_error(capsys, *argv)
    assert "worker address 'nohost'" in err
    assert not (tmp_path / "SERVING").exists()  # nothing was pinned or started


def test_configs_are_frozen_and_check_themselves() -> None:
    cfg = WorkerConfig(models="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_seqs = 4  # type: ignore[misc]
    with pytest.raises(ConfigError, match="--max-queue 8 < --max-batch 16"):
        dataclasses.replace(cfg, max_batch=16, max_queue=8)


# ---------------------------------------------------------------- serve → local workers


SERVE_WORKER_FLAGS = [
    "--version", "v7",
    "--threads", "3",
    "--device", "cuda",
    "--max-batch", "7",
    "--max-delay-ms", "3.5",
    "--max-queue", "70",
    "--max-seqs", "8",
    "--max-new-tokens", "20",
    "--watch-interval", "0.25",
    "--worker-max-rss", "900",
]  # fmt: skip


def worker_config_from(argv: list[str]) -> WorkerConfig:
    """What `recgen worker` makes of a local worker's command line."""
    assert argv[1:4] == ["-m", "recgen.cli", "worker"]
    cfg = config(*argv[3:])
    assert isinstance(cfg, WorkerConfig)
    return cfg


def test_every_worker_setting_of_serve_reaches_its_local_workers() -> None:
    serve = config("serve", "--models", "/models", *SERVE_WORKER_FLAGS, "--shards", "2")
    assert isinstance(serve, ServeConfig)
    w = Worker("local-1", "unix:/tmp/recgen-x/worker-1.sock", local=True, shard=1, shard_count=2)
    got = worker_config_from(local_worker_argv(serve.worker, w, serve.shards))
    want = dataclasses.replace(serve.worker, listen=w.address, shard=(1, 2), parent_pid=os.getpid())
    assert got == want
    # Every setting serve takes for its workers was set away from its default above.
    default = WorkerConfig()
    for f in dataclasses.fields(WorkerConfig):
        if not f.metadata["flag"].per_process:
            assert getattr(got, f.name) != getattr(default, f.name), f.name


def test_local_worker_argv_ignores_the_gateways_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every value is spelled out, so a RECGEN_* variable of the worker's environment
    cannot change it (server/workers.py also drops them from the worker's environment)."""
    serve = config("serve", "--models", "/models")
    w = Worker("local-0", "unix:/tmp/w0.sock", local=True)
    argv = local_worker_argv(serve.worker, w, 1)
    monkeypatch.setenv("RECGEN_MAX_SEQS", "2")
    monkeypatch.setenv("RECGEN_THREADS", "9")
    got = worker_config_from(argv)
    assert got.max_seqs == 32 and got.threads == 0
    assert {"RECGEN_TLS_CERT", "RECGEN_MAX_SEQS", "RECGEN_LISTEN"} <= env_names(WorkerConfig)


def test_worker_config_round_trips_through_the_worker_parser_field_by_field() -> None:
    cfg = WorkerConfig(
        models="/models",
        version="v3",
        listen="0.0.0.0:7443",
        threads=2,
        device="cuda",
        max_batch=9,
        max_delay_ms=0.5,
        max_queue=90,
        max_seqs=5,
        max_new_tokens=12,
        shard=(2, 4),
        watch_interval=0.0,
        max_rss=512,
        parent_pid=4242,
        tls_cert="/tls/w.crt",
        tls_key="/tls/w.key",
        tls_client_ca="/tls/ca.crt",
        insecure=True,
    )
    default = WorkerConfig()
    assert all(getattr(cfg, f.name) != getattr(default, f.name) for f in dataclasses.fields(cfg))
    assert config("worker", *cfg.to_argv()) == cfg
    assert config(
        "worker", *default.to_argv(), "--models", "m", "--listen", "unix:/w"
    ) == dataclasses.replace(default, models="m", listen="unix:/w")


def test_export_config_round_trips_too() -> None:
    cfg = ExportConfig(
        models="/models",
        with_llm=False,
        progress=False,
        promote=False,
        max_memory=1 << 30,
        interactions="i.csv",
        items="t.csv",
        factors=8,
    )
    from recgen.config.flags import to_argv

    assert config("export", *to_argv(cfg)) == cfg


def test_global_flags_work_after_the_subcommand_too():
    after = cli.build_parser().parse_args(
        ["serve", "--models", "m", "--log-format", "json", "--log-level", "DEBUG"]
    )
    assert (after.log_format, after.log_level) == ("json", "DEBUG")
    before = cli.build_parser().parse_args(["--log-format", "json", "serve", "--models", "m"])
    assert (before.log_format, before.log_level) == ("json", "INFO")  # not reset by the subcommand


def test_help_shows_defaults_and_never_a_variables_value(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("RECGEN_STATE", "postgresql://app:s3cret@db/recgen")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 50051)" in text and "(default: 32)" in text
    assert "(now set by RECGEN_STATE)" in text
    assert "s3cret" not in text


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_faiss_loader_noise_is_not_logged_at_info(fmt: str):
    """Six "Could not load library ... ModuleNotFoundError" lines per start read like errors."""
    import subprocess
    import sys

    code = f"from recgen.cli import _configure_logging; _configure_logging('INFO', '{fmt}'); import faiss"
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "faiss" not in err, err
    code = code.replace("'INFO'", "'DEBUG'")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "faiss.loader" in err  # DEBUG still shows it: the test can tell


# ---------------------------------------------------------------- config file, secrets, defaults


def file_config(*argv: str):
    """As `config`, with --config FILE found in argv (as cli.main does)."""
    args = cli.build_parser(list(argv)).parse_args(list(argv))
    return from_args(CONFIGS[args.command], args), args


def test_config_file_sits_between_variables_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "recgen.toml"
    toml.write_text(
        'log_format = "json"\n'
        "[serve]\nport = 6000\nworkers = 3\nworker_address = ['unix:/a', 'unix:/b']\nmetrics = false\n"
        "[worker]\nmax_seqs = 4\nmax_delay_ms = 1\n"
    )
    monkeypatch.setenv("RECGEN_WORKERS", "5")
    cfg, args = file_config("--config", str(toml), "serve", "--models", "m", "--port", "7000")
    assert cfg.port == 7000  # flag beats file
    assert cfg.workers == 5  # variable beats file
    assert cfg.worker.max_seqs == 4 and cfg.worker.max_delay_ms == 1.0  # file beats default
    assert cfg.worker_address == ("unix:/a", "unix:/b") and cfg.metrics is False
    assert cfg.host == "127.0.0.1"  # default
    assert args.log_format == "json"  # a global setting, top level in the file
    monkeypatch.setenv("RECGEN_CONFIG", str(toml))  # the variable names the file too
    assert file_config("serve", "--models", "m")[0].port == 6000


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[serve]\nmax_seq = 4\n", "[serve] max_seq: no such setting"),
        ("[worker]\nmax_seq = 4\n", "did you mean max_seqs?"),
        ("[serving]\nport = 1\n", "unknown section [serving]"),
        ("[serve]\nport = 'http'\n", "[serve] port = 'http' (for --port): expected an integer"),
        ("[serve]\nport = 1.5\n", "expected int"),
        ("[serve\n", "not valid TOML"),
    ],
)
def test_a_bad_config_file_is_an_error_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, says: str
) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text(text)
    assert says in usage_error(capsys, "--config", str(toml), "serve", "--models", "m")


def test_a_password_on_the_command_line_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://app:s3cret@db/recgen"
    err = usage_error(capsys, "serve", "--models", "m", "--state", url)
    assert "RECGEN_STATE" in err and "--state-file" in err and "s3cret" not in err
    assert "s3cret" not in usage_error(capsys, "export", "--models", "m", "--feedback", url)
    assert "RECGEN_LOG_SALT" in usage_error(capsys, "serve", "--models", "m", "--log-salt", "pepper")
    # Without a password the flag is fine; with one, the variable and the file are.
    assert config("serve", "--models", "m", "--state", "postgresql://app@db/recgen").state.endswith(
        "@db/recgen"
    )
    secret = tmp_path / "state-url"
    secret.write_text(url + "\n")
    assert config("serve", "--models", "m", "--state-file", str(secret)).state == url
    monkeypatch.setenv("RECGEN_STATE", url)
    monkeypatch.setenv("RECGEN_LOG_SALT", "pepper")
    cfg = config("serve", "--models", "m")
    assert (cfg.state, cfg.log_salt) == (url, "pepper")
    monkeypatch.delenv("RECGEN_STATE")
    monkeypatch.setenv("RECGEN_STATE_FILE", str(secret))
    assert config("serve", "--models", "m").state == url
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    help_text = capsys.readouterr().out
    assert (
        "s3cret" not in help_text
        and "pepper" not in help_text
        and "(now set by RECGEN_STATE_FILE)" in help_text
    )
    err = usage_error(capsys, "serve", "--models", "m", "--state", "a.db", "--state-file", str(secret))
    assert "give one of them" in err
    assert "no-such" in usage_error(
        capsys, "serve", "--models", "m", "--state-file", str(tmp_path / "no-such")
    )


def test_metrics_and_the_access_log_are_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = config("serve", "--models", "m")
    assert cfg.metrics and cfg.metrics_port == 9464 and cfg.metrics_host is None and cfg.host == "127.0.0.1"
    assert cfg.access_log
    assert not config("serve", "--models", "m", "--no-metrics").metrics
    assert not config("serve", "--models", "m", "--no-access-log").access_log
    monkeypatch.setenv("RECGEN_ACCESS_LOG", "off")
    assert not config("serve", "--models", "m").access_log
    assert config("serve", "--models", "m", "--access-log").access_log  # the flag beats the variable


def test_readme_lists_every_setting() -> None:
    """README.md's settings block is exactly what the generator prints from the dataclasses."""
    from recgen.config.table import block, table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert block(readme) == table(), "run `python -m recgen.config.table --write README.md`"
    for cls in CONFIGS.values():
        for name in env_names(cls):
            assert f"`{name}`" in readme, name
