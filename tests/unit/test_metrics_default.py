"""Metrics are on by default (server/main.py `_start_metrics`): on loopback port 9464, and a
gateway whose default port is taken goes on without them instead of failing to start; a port
asked for explicitly must bind. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import urllib.request

import pytest

from recgen.config import ServeConfig, WorkerConfig
from recgen.config.serve import DEFAULT_METRICS_PORT
from server.main import _start_metrics


async def _render() -> str:
    return "up 1\n"


def _taken() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_the_default_is_loopback_9464() -> None:
    cfg = ServeConfig(worker=WorkerConfig(models="m"))
    assert (cfg.metrics, cfg.metrics_port, cfg.metrics_host or cfg.host) == (True, 9464, "127.0.0.1")


def test_a_taken_default_port_is_a_warning_an_explicit_one_an_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # import-linter (tests/unit/test_layers.py) configures logging and disables existing loggers.
    monkeypatch.setattr(logging.getLogger("server.main"), "disabled", False)

    async def run() -> None:
        # The default port: ours to hold for the test if free; if another process holds it, the
        # same case.
        holder = socket.socket()
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", DEFAULT_METRICS_PORT))
            holder.listen()
        try:
            cfg = ServeConfig(worker=WorkerConfig(models="m"))
            with caplog.at_level(logging.WARNING, logger="server.main"):
                assert await _start_metrics(cfg, _render) is None
            assert f"default port {DEFAULT_METRICS_PORT} taken" in caplog.text
        finally:
            holder.close()
        with _taken() as other:
            explicit = ServeConfig(worker=WorkerConfig(models="m"), metrics_port=other.getsockname()[1])
            with pytest.raises(OSError):
                await _start_metrics(explicit, _render)
        free = await _start_metrics(ServeConfig(worker=WorkerConfig(models="m"), metrics_port=0), _render)
        assert free is not None
        try:
            port = free.sockets[0].getsockname()[1]
            body = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            )
            assert body == b"up 1\n"
        finally:
            free.close()
            await free.wait_closed()

    asyncio.run(run())
