"""Hot model swap: follow the repository's SERVING pointer without failing a request.

The watcher polls the pointer (a small file read). When it names another
version, that version is loaded and warmed up on a side thread while the old
one keeps serving, brought up to the live catalog's applied change, then
switched in with one assignment under the catalog lock (so no catalog change
lands on the old version only). Requests already holding the old version
finish on it: ranking jobs carry the version they were built for, and the
old text generator is stopped only once its queue and batch are empty (or
after DRAIN_S). A version that fails to load or warm up (a file whose bytes
no longer match the manifest's checksum, say, corrupted after promotion) is
refused: logged, counted (`model_versions_refused` in Stats, so the gateway's
/metrics shows `recgen_worker_events_total{name="model_versions_refused"}`)
and reported on the worker's health service POINTER_SERVICE as NOT_SERVING,
while the old one keeps serving (health "" and the worker service stay
SERVING: requests are answered). The watcher retries only when the pointer
moves again; POINTER_SERVICE is SERVING again once the worker serves the
version the pointer names.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2

from recgen.promotion import POINTER_HEALTH_SERVICE
from recgen.repository import ModelRepository, RepositoryError

LOG = logging.getLogger(__name__)

DRAIN_S = 60.0  # longest an old version's text generator is kept for streams in flight
POINTER_SERVICE = POINTER_HEALTH_SERVICE  # see recgen/promotion.py


def release_freed_memory() -> str:
    """Return freed heap pages to the OS (glibc's malloc_trim): the old version's arrays were
    allocated on loader threads, in arenas glibc keeps after they are freed, so without this
    every hot swap left each worker ~600 MiB bigger (docs/soak.md). A no-op off glibc."""
    rss = _rss_mib()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return "malloc_trim unavailable"
    return f"RSS {rss:.0f} -> {_rss_mib():.0f} MiB"


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") / 2**20)
    except OSError:
        return float("nan")


class ModelWatcher:
    def __init__(self, service: Any, root: Path, interval: float, health: Any = None) -> None:
        self.service = service
        self.repo = ModelRepository(root)
        self.interval = interval
        self.health = health  # grpc_health's aio HealthServicer, or None
        self.failed: set[str] = set()
        self.swaps = 0
        self._on_pointer: bool | None = None

    async def _report(self, on_pointer: bool) -> None:
        """POINTER_SERVICE's status: whether the worker serves what the pointer names."""
        if self.health is None or on_pointer == self._on_pointer:
            return
        self._on_pointer = on_pointer
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if on_pointer
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(POINTER_SERVICE, status)

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
                return
            except TimeoutError:
                pass
            try:
                target = await loop.run_in_executor(None, self.repo.serving)
            except RepositoryError as e:
                LOG.warning("cannot read the serving pointer: %s", e)
                continue
            if target == self.service.model.name:
                await self._report(True)
            elif target not in self.failed:
                await self._report(await self.swap(target))

    async def swap(self, version: str) -> bool:
        from worker.model import LoadedModel

        svc = self.service
        loop = asyncio.get_running_loop()
        t = time.perf_counter()
        LOG.info("loading model version %s beside %s", version, svc.model.name)
        try:
            new = await loop.run_in_executor(
                None, LoadedModel.load, self.repo.root, version, svc.cfg, svc.metrics
            )
            await loop.run_in_executor(None, new.warmup)
        except Exception as e:  # noqa: BLE001 - any failure keeps the old version serving
            LOG.error("model version %s refused (%s): still serving %s", version, e, svc.model.name)
            self.failed.add(version)
            svc.metrics.inc("model_versions_refused")
            return False
        async with svc.catalog_lock:
            # Same thread as ranking: the replay mutates arrays the batches read.
            await loop.run_in_executor(svc.model_executor, svc.live.replay, new)
            old, svc.model = svc.model, new
        self.swaps += 1
        svc.metrics.inc("model_swaps")
        LOG.info("now serving %s (was %s), swap took %.1f s", new.name, old.name, time.perf_counter() - t)
        asyncio.get_running_loop().create_task(self._retire(old))
        return True

    async def _retire(self, old: Any) -> None:
        """Close the old version once its text streams are done, and give its memory back."""
        name = old.name
        deadline = time.monotonic() + DRAIN_S
        while old.llm is not None and time.monotonic() < deadline:
            st = old.llm.stats()
            if st.queue_depth == 0 and st.running == 0:
                break
            await asyncio.sleep(0.2)
        # On the ranking thread: rank batches queued on the old version before the swap finish first.
        await asyncio.get_running_loop().run_in_executor(self.service.model_executor, old.release)
        del old  # normally the last reference
        gc.collect()
        LOG.info("retired model version %s; %s", name, release_freed_memory())
