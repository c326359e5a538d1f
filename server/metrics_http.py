"""A minimal HTTP endpoint for Prometheus: GET /metrics, nothing else.

asyncio streams, one request per connection; enough for a scraper and curl,
no web framework on the serving path. What it serves is rendered by
server/metrics.py (prometheus_client's text format); prometheus_client's own
HTTP server is not used because a scrape first awaits the workers' Stats rpcs
on this event loop. The content type is the classic text format 0.0.4, which
every Prometheus 2.x reads (every name here is a legacy-valid name).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

LOG = logging.getLogger(__name__)


async def start_metrics_server(host: str, port: int, render: Callable[[], Awaitable[str]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5.0)
            while (await asyncio.wait_for(reader.readline(), timeout=5.0)).strip():
                pass  # skip headers
            parts = request.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                body = (await render()).encode()
                head = (
                    f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE_PLAIN_0_0_4}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
            else:
                body = b"not found\n"
                head = f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError) as e:
            LOG.debug("metrics connection: %s", e)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    return server
