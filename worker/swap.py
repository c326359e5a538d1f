"""Hot model swap: follow the repository's SERVING pointer without failing a request.

The watcher polls the pointer (a small file read). When it names another
version, that version is loaded and warmed up on a side thread while the old
one keeps serving, brought up to the live catalog's applied change, then
switched in with one assignment under the catalog lock (so no catalog change
lands on the old version only). Requests already holding the old version
finish on it: ranking jobs carry the version they were built for, and the
old text generator is stopped only once its queue and batch are empty (or
after DRAIN_S). A version that fails to load or warm up is skipped (logged)
and the old one keeps serving; the watcher retries only when the pointer
moves again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from recgen.repository import ModelRepository, RepositoryError

LOG = logging.getLogger(__name__)

DRAIN_S = 60.0  # longest an old version's text generator is kept for streams in flight


class ModelWatcher:
    def __init__(self, service: Any, root: Path, interval: float) -> None:
        self.service = service
        self.repo = ModelRepository(root)
        self.interval = interval
        self.failed: set[str] = set()
        self.swaps = 0

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
            if target != self.service.model.name and target not in self.failed:
                await self.swap(target)

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
            LOG.error("model version %s failed to load (%s): still serving %s", version, e, svc.model.name)
            self.failed.add(version)
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
        """Close the old version once its text streams are done."""
        deadline = time.monotonic() + DRAIN_S
        while old.llm is not None and time.monotonic() < deadline:
            st = old.llm.stats()
            if st.queue_depth == 0 and st.running == 0:
                break
            await asyncio.sleep(0.2)
        await asyncio.get_running_loop().run_in_executor(None, old.close)
        LOG.info("retired model version %s", old.name)
