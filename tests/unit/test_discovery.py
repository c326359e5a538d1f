"""Worker addresses: fixed ones, DNS names in gRPC target syntax, and what a name resolves to."""

from __future__ import annotations

import asyncio

import pytest

from recgen.config import WorkerConfig
from server.discovery import Discovery, DnsName, WorkerTarget, parse_worker_addresses
from server.workers import WorkerPool, WorkerTls


def test_fixed_addresses_and_dns_names_repeated_or_comma_separated() -> None:
    fixed, names = parse_worker_addresses(
        ["10.0.0.5:7000, unix:/run/w.sock", "dns:///workers.svc:7443", "dns:other:7000", "[fd00::2]:7000"]
    )
    assert fixed == [
        WorkerTarget("10.0.0.5:7000"),
        WorkerTarget("unix:/run/w.sock"),
        WorkerTarget("[fd00::2]:7000"),
    ]
    assert names == [DnsName("workers.svc", 7443), DnsName("other", 7000)]
    assert str(names[0]) == "dns:///workers.svc:7443"


@pytest.mark.parametrize(
    "bad, message",
    [
        ("workers.svc", "expected HOST:PORT"),
        ("dns:///workers.svc", "expected HOST:PORT"),
        ("host:0", "port in 1..65535"),
        ("host:http", "expected HOST:PORT"),
        ("dns://8.8.8.8/workers.svc:7000", "DNS server in the target is not supported"),
    ],
)
def test_bad_worker_address_is_refused_with_the_reason(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_worker_addresses([bad])


def test_a_name_resolves_to_one_target_per_address_checked_against_the_name() -> None:
    found = asyncio.run(Discovery([WorkerTarget("10.0.0.5:7000")], [DnsName("localhost", 7443)]).targets())
    assert found[0] == WorkerTarget("10.0.0.5:7000")
    resolved = found[1:]
    assert resolved and all(t.server_name == "localhost" for t in resolved)
    assert {t.address for t in resolved} <= {"127.0.0.1:7443", "[::1]:7443"}


def test_remote_workers_need_tls_or_an_explicit_insecure_flag() -> None:
    spec = WorkerConfig(models="m", threads=1)
    with pytest.raises(ValueError, match="need TLS"):
        WorkerPool(spec, 0, remote=["10.0.0.5:7000"])
    with pytest.raises(ValueError, match="need TLS"):
        WorkerPool(spec, 0, remote=["dns:///workers.svc:7443"])
    # A unix socket is local: plaintext is fine there.
    pool = WorkerPool(spec, 0, remote=["unix:/tmp/nowhere.sock"])
    pool.socket_dir.rmdir()
    pool = WorkerPool(spec, 0, remote=["10.0.0.5:7000"], insecure=True)
    pool.socket_dir.rmdir()
    assert WorkerTls(ca="ca.pem").server_name is None
