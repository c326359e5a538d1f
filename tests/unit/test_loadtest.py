"""The load generator against the real echo server on 127.0.0.1: what it counts is what happened.

Bounded: every run is ~1-2 s of load. These check the tool's bookkeeping, never a speed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tools.echo_server import running_echo
from tools.loadtest import KINDS, LoadConfig, Report, report_from_ghz, run_load

ROOT = Path(__file__).resolve().parents[2]


def mixed(**kw: Any) -> LoadConfig:
    """A config with every request kind: 40 % plain Recommend, 20 % each of the others."""
    return LoadConfig(explain_share=0.2, stream_share=0.2, feedback_share=0.2, **kw)


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    with running_echo() as target:
        yield target


@pytest.fixture(scope="module")
def slow_echo() -> Iterator[str]:
    """20 ms per request, one at a time: serves at most ~50 requests/s."""
    with running_echo("--delay-ms", "20", "--concurrency-limit", "1") as target:
        yield target


def run(cfg: LoadConfig) -> Report:
    return asyncio.run(run_load(cfg))


def assert_consistent(rep: Report) -> None:
    assert sum(rep.status_counts.values()) == rep.requests
    assert rep.ok == rep.status_counts.get("OK", 0)
    assert rep.errors == rep.requests - rep.ok
    assert rep.sent + rep.expired_before_send == rep.requests
    assert sum(k.requests for k in rep.kinds.values()) == rep.requests
    for stats in [*rep.kinds.values()]:
        assert sum(stats.status_counts.values()) == stats.requests
        if stats.ok:
            lat = stats.latency_ms
            assert lat is not None
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99_9"] <= lat["max"]
        else:
            assert stats.latency_ms is None


def assert_mixed_ok(rep: Report) -> None:
    assert_consistent(rep)
    assert rep.errors == 0, rep.status_counts
    for kind in KINDS:
        assert rep.kinds[kind].ok > 0, kind
    stream = rep.kinds["stream"]
    assert stream.first_piece_ms is not None and stream.latency_ms is not None
    assert stream.first_piece_ms["p50"] <= stream.first_piece_ms["p99"]
    # Each stream's first piece comes before its end, so every order statistic does too.
    assert stream.first_piece_ms["p50"] <= stream.latency_ms["p50"]
    assert stream.first_piece_ms["p99"] <= stream.latency_ms["p99"]


def test_closed_loop_mixed_workload(echo: str) -> None:
    rep = run(mixed(target=echo, concurrency=8, duration=1.5))
    assert rep.mode == "closed" and rep.concurrency == 8
    assert_mixed_ok(rep)
    assert rep.throughput > 50
    assert rep.expired_before_send == 0


def test_open_loop_mixed_workload_follows_the_schedule(echo: str) -> None:
    rep = run(mixed(target=echo, rate=200, duration=1.5))
    assert rep.mode == "open" and rep.rate == 200
    assert_mixed_ok(rep)
    # The schedule, not the server, sets how many requests there are.
    assert 299 <= rep.requests <= 301
    assert 150 < rep.throughput <= 215
    assert rep.send_lag_ms is not None


def test_max_requests_bounds_a_run(echo: str) -> None:
    rep = run(LoadConfig(target=echo, concurrency=4, duration=None, max_requests=50))
    assert_consistent(rep)
    assert rep.requests == rep.ok == 50


@pytest.mark.skipif(shutil.which("ghz") is not None, reason="ghz installed: it would be used")
def test_tool_ghz_falls_back_to_the_own_generator(echo: str) -> None:
    rep = run(LoadConfig(target=echo, concurrency=2, duration=None, max_requests=20, tool="ghz"))
    assert rep.tool == "own" and rep.ok == 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connections_are_errors_not_successes() -> None:
    rep = run(mixed(target=f"127.0.0.1:{_free_port()}", concurrency=4, duration=0.5, timeout=1.0))
    assert_consistent(rep)
    assert rep.requests > 0
    assert rep.ok == 0 and rep.throughput == 0
    assert rep.errors == rep.requests
    assert set(rep.status_counts) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert rep.latency_ms is None
    assert rep.kinds["stream"].first_piece_ms is None


def test_deadline_exceeded_is_counted_as_such(slow_echo: str) -> None:
    # 5 ms deadline against a 20 ms service time: nothing can succeed.
    rep = run(mixed(target=slow_echo, concurrency=4, duration=0.5, timeout=0.005))
    assert_consistent(rep)
    assert rep.requests > 0
    assert rep.ok == 0
    assert rep.status_counts == {"DEADLINE_EXCEEDED": rep.requests}


def test_resource_exhausted_is_listed() -> None:
    with running_echo("--delay-ms", "50", "--max-concurrent-rpcs", "1") as target:
        rep = run(LoadConfig(target=target, concurrency=8, duration=0.5))
    assert_consistent(rep)
    assert rep.status_counts.get("RESOURCE_EXHAUSTED", 0) > 0
    assert rep.ok < rep.requests


def test_open_loop_latency_includes_queueing_in_the_server(slow_echo: str) -> None:
    service = run(LoadConfig(target=slow_echo, concurrency=1, duration=0.5))
    assert service.errors == 0 and service.latency_ms is not None
    service_p50 = service.latency_ms["p50"]
    assert 15 < service_p50 < 200
    # 100/s offered to a service that completes ~50/s: the queue grows for the whole second, and the
    # latency counted from the scheduled send time shows it.
    rep = run(LoadConfig(target=slow_echo, rate=100, duration=1.0, timeout=10.0))
    assert_consistent(rep)
    assert rep.errors == 0
    assert rep.throughput < 80
    assert rep.latency_ms is not None
    assert rep.latency_ms["p99"] > 10 * service_p50
    assert rep.latency_ms["p50"] > 3 * service_p50


def test_open_loop_counts_waiting_for_max_outstanding() -> None:
    with running_echo("--delay-ms", "20") as target:
        # One request in flight at most: the client can only send ~50/s of the 100/s due. The wait in the
        # client is counted from the scheduled time, exactly like a wait in the server.
        rep = run(LoadConfig(target=target, rate=100, max_outstanding=1, duration=0.6, timeout=10.0))
        assert_consistent(rep)
        assert rep.errors == 0 and rep.latency_ms is not None
        assert rep.latency_ms["p99"] > 250
        assert rep.send_lag_ms is not None and rep.send_lag_ms["p99"] > 250
        # Plain requests with a 5 ms deadline queued behind 20 ms explain requests: their deadline passes
        # before they can be sent. They are never sent and count as DEADLINE_EXCEEDED.
        short = run(
            LoadConfig(
                target=target,
                rate=200,
                max_outstanding=1,
                duration=0.5,
                timeout=0.005,
                text_timeout=5.0,
                explain_share=0.5,
            )
        )
    assert_consistent(short)
    assert short.expired_before_send > 0
    assert short.sent < short.requests
    assert short.kinds["explain"].ok > 0
    assert short.kinds["recommend"].ok == 0
    assert short.kinds["recommend"].status_counts == {"DEADLINE_EXCEEDED": short.kinds["recommend"].requests}


def test_cli_sweep_writes_json_and_png(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "load.json", tmp_path / "load.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.loadtest",
            "--echo",
            "--sweep-concurrency",
            "1,4",
            "--sweep-rates",
            "50,100",
            "--duration",
            "0.4",
            "--stream-share",
            "0.3",
            "--feedback-share",
            "0.2",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "p99.9 ms" in proc.stdout and "first text piece" in proc.stdout
    doc = json.loads(out_json.read_text())
    reps = doc["reports"]
    assert [(r["mode"], r["concurrency"] or r["rate"]) for r in reps] == [
        ("closed", 1),
        ("closed", 4),
        ("open", 50.0),
        ("open", 100.0),
    ]
    assert all(r["name"] == "echo" and r["ok"] > 0 and r["errors"] == 0 for r in reps)
    assert doc["meta"]["grpcio"]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_needs_a_target() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.loadtest", "--duration", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "--target" in proc.stderr


def loadtest_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.loadtest", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_cli_fails_on_a_status_a_healthy_server_never_answers() -> None:
    # Nothing listens there: every request is UNAVAILABLE, which `make loadtest` must not pass.
    proc = loadtest_cli("--target", f"127.0.0.1:{_free_port()}", "--max-requests", "5", "--timeout", "1")
    assert proc.returncode == 1, proc.stderr
    assert "unexpected statuses" in proc.stderr and "UNAVAILABLE" in proc.stderr


def test_cli_passes_refusals_past_capacity() -> None:
    # RESOURCE_EXHAUSTED (and DEADLINE_EXCEEDED) past capacity are measured, not a failure.
    with running_echo("--delay-ms", "50", "--max-concurrent-rpcs", "1") as target:
        proc = loadtest_cli("--target", target, "--concurrency", "8", "--max-requests", "40")
    assert proc.returncode == 0, proc.stderr
    assert "RESOURCE_EXHAUSTED" in proc.stdout


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        LoadConfig(explain_share=0.6, stream_share=0.6).validate()
    with pytest.raises(ValueError):
        LoadConfig(duration=None, max_requests=None).validate()


def test_ghz_summary_maps_to_a_report() -> None:
    doc = {
        "count": 1000,
        "total": 2_000_000_000,
        "average": 1_500_000,
        "slowest": 9_000_000,
        "latencyDistribution": [{"percentage": p, "latency": p * 100_000} for p in (10, 50, 90, 99)],
        "statusCodeDistribution": {"OK": 990, "DeadlineExceeded": 10},
    }
    rep = report_from_ghz(doc, LoadConfig(target="127.0.0.1:1", concurrency=4))
    assert rep.ok == 990 and rep.errors == 10 and rep.throughput == 495.0
    assert rep.status_counts == {"OK": 990, "DEADLINE_EXCEEDED": 10}
    assert rep.latency_ms is not None and rep.latency_ms["p99"] == 9.9


def test_plot_gives_each_target_its_own_scale() -> None:
    """The echo baseline serves 5-10x more per second: a recgen panel must not be squashed by it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tools.loadtest.plot import _latency_panel, _x

    reports = [
        Report.from_dict(d) for d in json.loads((ROOT / "docs" / "loadtest.json").read_text())["reports"]
    ]
    closed = lambda name: [r for r in reports if r.name == name and r.mode == "closed"]  # noqa: E731
    own, base = [r for r in reports if r.name != "echo" and r.mode == "closed"], closed("echo")
    assert own and base and max(_x(r) for r in base) > 2 * max(_x(r) for r in own)
    fig, ax = plt.subplots()
    _latency_panel(ax, own, base, "closed")
    assert ax.get_xlim()[1] <= 1.2 * max(_x(r) for r in own)
    plt.close(fig)
