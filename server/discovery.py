"""Where the remote workers are: fixed addresses and DNS names resolved again and again.

`--worker-address` takes HOST:PORT, unix:PATH, or a DNS name in gRPC's target
syntax, `dns:///NAME:PORT` or `dns:NAME:PORT`, that may resolve to many
addresses (a Kubernetes headless service answers with one A record per
ready pod). Each resolution yields one `WorkerTarget` per address; the pool
compares the set with the workers it has, dials new ones and drains vanished
ones. Names resolve with the system resolver (getaddrinfo, in an executor so
the event loop never blocks), so /etc/hosts, search domains and the cluster
DNS all apply. A failed lookup keeps the last answer: a DNS outage must not
empty the pool. This module dials nothing and knows nothing of TLS.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerTarget:
    """One address to dial. `server_name`: the name its TLS certificate is checked
    against when it is not the host in `address` (a resolved IP of a DNS name)."""

    address: str
    server_name: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.address.startswith("unix:")


@dataclass(frozen=True)
class DnsName:
    host: str
    port: int

    def __str__(self) -> str:
        return f"dns:///{self.host}:{self.port}"


def _split_host_port(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {value!r}: expected HOST:PORT with a port in 1..65535")
    return host.strip("[]"), int(port)


def parse_worker_addresses(values: list[str]) -> tuple[list[WorkerTarget], list[DnsName]]:
    """Fixed targets and DNS names from repeated and/or comma-separated flag values."""
    fixed: list[WorkerTarget] = []
    names: list[DnsName] = []
    for value in (v.strip() for raw in values for v in raw.split(",")):
        if not value:
            continue
        if value.startswith("unix:"):
            fixed.append(WorkerTarget(value))
        elif value.startswith("dns:"):
            # dns:///name:port (no authority) or dns:name:port; a DNS server in the
            # authority (dns://8.8.8.8/name:port) is not supported: the system resolver decides.
            rest = value.removeprefix("dns:")
            if rest.startswith("//"):
                authority, _, rest = rest[2:].partition("/")
                if authority:
                    raise ValueError(f"worker address {value!r}: a DNS server in the target is not supported")
            names.append(DnsName(*_split_host_port(rest, "worker address")))
        else:
            _split_host_port(value, "worker address")
            fixed.append(WorkerTarget(value))
    return fixed, names


async def resolve(name: DnsName) -> list[WorkerTarget]:
    """Every address NAME resolves to, sorted, each checked against NAME under TLS."""
    loop = asyncio.get_running_loop()
    infos = await loop.run_in_executor(
        None, lambda: socket.getaddrinfo(name.host, name.port, type=socket.SOCK_STREAM)
    )
    ips = sorted({str(info[4][0]) for info in infos})
    return [
        WorkerTarget(f"[{ip}]:{name.port}" if ":" in ip else f"{ip}:{name.port}", server_name=name.host)
        for ip in ips
    ]


class Discovery:
    """The current set of remote worker targets: fixed ones plus what each name resolves to now."""

    def __init__(self, fixed: list[WorkerTarget], names: list[DnsName]) -> None:
        self.fixed = fixed
        self.names = names
        self._last: dict[DnsName, list[WorkerTarget]] = {}

    @property
    def dynamic(self) -> bool:
        return bool(self.names)

    async def targets(self) -> list[WorkerTarget]:
        out = list(self.fixed)
        for name in self.names:
            try:
                found = await resolve(name)
            except OSError as e:  # socket.gaierror included: keep the last answer
                LOG.warning(
                    "cannot resolve %s (%s): keeping %d known workers", name, e, len(self._last.get(name, []))
                )
                found = self._last.get(name, [])
            else:
                if found != self._last.get(name):
                    LOG.info("%s resolves to %s", name, ", ".join(t.address for t in found) or "nothing")
                self._last[name] = found
            out += found
        return list(dict.fromkeys(out))  # one worker per address even if two names share it
