"""The gateway's side of the live catalog: the change log, the item-id view, worker sync.

The state store holds the catalog change log (append-only, ordered by seq);
it is the truth. This module

- keeps the view of which item ids exist now (the serving versions' catalogs
  plus the log), which SendFeedback and SimilarItems validate against;
- brings every worker up to the log's end: before it enters rotation (the
  pool's on_ready hook), after each UpsertItems/DeleteItems (which answer
  only once every worker in rotation applied the change; one that cannot is
  taken out of rotation and synced before it returns), when a Rank answer
  shows a worker behind (restarted behind our back), and every
  POLL_S seconds (changes written by another gateway on shared state);
- notices when the model repository's SERVING pointer moves (a hot swap) and
  adds that version's items to the view.

Workers skip changes they already applied, so sending from a stale position
is harmless; a worker that is behind the position sent answers
FAILED_PRECONDITION and gets the log from the start.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from recgen.repository import ModelRepository, RepositoryError
from recgen.worker.v1 import worker_pb2 as wpb
from server.errors import NotFound
from server.state import CatalogChange, StateStore
from server.workers import Worker, WorkerPool

LOG = logging.getLogger(__name__)

POLL_S = 1.0
SYNC_TIMEOUT_S = 30.0  # embedding a large batch of new items takes a while on a busy CPU


def _to_pb(ch: CatalogChange) -> wpb.CatalogChange:
    return wpb.CatalogChange(
        seq=ch.seq,
        delete=ch.op == "DELETE",
        item_id=ch.item_id,
        title=ch.title,
        text=ch.text,
        categories=list(ch.categories),
    )


class CatalogSync:
    """The gateway's view of the live catalog and the sync of its workers to the change
    log (each worker applies the log with worker/live_catalog.py)."""

    def __init__(self, store: StateStore, pool: WorkerPool, models: Path | str, version: str | None) -> None:
        self.store = store
        self.pool = pool
        self.repo = ModelRepository(models)
        self.pinned = version
        self.serving = self.repo.open(version, verify=False).name
        # item_id -> title of every item a serving version has held (the workers answer with ids
        # and scores; the public reply's titles come from here and the log's upserts).
        self.base_titles = {
            it.item_id: it.title for it in self.repo.open(self.serving, verify=False).catalog()
        }
        self.base_ids = self.base_titles.keys()
        self.overlay: dict[str, bool] = {}  # item_id -> exists, from the change log
        self.overlay_titles: dict[str, str] = {}  # item_id -> title of its last upsert in the log
        self.seq = 0  # last change folded into the view
        self.worker_seq: dict[str, int] = {}  # worker name -> last change it confirmed
        self._write_lock = asyncio.Lock()

    # ------------------------------------------------------------------ view

    def __contains__(self, item_id: object) -> bool:
        if not isinstance(item_id, str):
            return False
        return self.overlay.get(item_id, item_id in self.base_ids)

    def title(self, item_id: str) -> str:
        """The item's title: its last upsert's, else the newest serving version's ("" if unknown)."""
        t = self.overlay_titles.get(item_id)
        return t if t is not None else self.base_titles.get(item_id, "")

    def ever_known(self, item_id: str) -> bool:
        return item_id in self.overlay or item_id in self.base_ids

    def _fold(self, changes: list[CatalogChange]) -> None:
        for ch in changes:
            if ch.seq <= self.seq:
                continue
            self.overlay[ch.item_id] = ch.op != "DELETE"
            if ch.op != "DELETE":
                self.overlay_titles[ch.item_id] = ch.title
            self.seq = ch.seq

    async def load(self) -> None:
        self._fold(await self.store.catalog_changes(0))
        LOG.info("live catalog: %d changes in the log (seq %d)", len(self.overlay), self.seq)

    # ------------------------------------------------------------------ writes

    async def upsert(self, items: list[tuple[str, str, str, tuple[str, ...]]]) -> tuple[int, int, int]:
        """(added, updated, seq) once the change is durable and every worker in rotation has it."""
        async with self._write_lock:
            added = sum(1 for i, *_ in items if i not in self)
            seq = await self.store.add_catalog_changes(
                [CatalogChange("UPSERT", i, title, text, cats) for i, title, text, cats in items]
            )
            await self.refresh()
        return added, len(items) - added, seq

    async def delete(self, item_ids: list[str]) -> tuple[int, int]:
        """(deleted, seq); NotFound (nothing deleted) if any id was never in the catalog."""
        async with self._write_lock:
            unknown = [i for i in item_ids if not self.ever_known(i)]
            if unknown:
                raise NotFound(f"item_ids not in the catalog: {', '.join(map(repr, unknown[:5]))}")
            deleted = sum(1 for i in item_ids if i in self)
            seq = await self.store.add_catalog_changes([CatalogChange("DELETE", i) for i in item_ids])
            await self.refresh()
        return deleted, seq

    # ------------------------------------------------------------------ sync

    async def refresh(self) -> None:
        """Push new log entries to every worker in rotation, then fold them into the view.

        `seq` advances only after the push, so a Rank answer from a worker behind
        `seq` means that worker really lags (see `resync_after`), not that a push
        is still on its way. Callers hold `_write_lock`."""
        changes = await self.store.catalog_changes(self.seq)
        target = changes[-1].seq if changes else self.seq
        behind = [w for w in self.pool.workers if w.healthy and self.worker_seq.get(w.name, 0) < target]
        results = await asyncio.gather(*(self.sync_worker(w) for w in behind), return_exceptions=True)
        for w, r in zip(behind, results, strict=True):
            if isinstance(r, BaseException):
                LOG.warning("worker %s missed catalog change %d (%s): out of rotation", w.name, target, r)
                self.pool.mark_failed(w)
        self._fold(changes)

    async def resync_after(self, seen_seq: int) -> None:
        """A worker answered at `seen_seq`, behind the log (restarted behind our back).
        The answer does not say which worker, so every one is re-sent from there
        (workers skip what they have)."""
        async with self._write_lock:
            for w in self.pool.workers:
                if w.healthy:
                    self.worker_seq[w.name] = min(self.worker_seq.get(w.name, 0), seen_seq)
            await self.refresh()

    async def sync_worker(self, w: Worker) -> None:
        """Bring one worker to the log's end (the pool's on_ready hook, too)."""
        if w.stub is None:
            raise ConnectionError(f"worker {w.name} has no channel")
        start = self.worker_seq.get(w.name, 0)
        changes = await self.store.catalog_changes(start)
        try:
            r = await w.stub.ApplyCatalog(
                wpb.ApplyCatalogRequest(changes=[_to_pb(c) for c in changes]), timeout=SYNC_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION or start == 0:
                raise
            # The worker has less than we thought (it restarted): send the whole log.
            changes = await self.store.catalog_changes(0)
            r = await w.stub.ApplyCatalog(
                wpb.ApplyCatalogRequest(changes=[_to_pb(c) for c in changes]), timeout=SYNC_TIMEOUT_S
            )
        self.worker_seq[w.name] = r.applied_seq

    async def on_worker_ready(self, w: Worker) -> None:
        self.worker_seq.pop(w.name, None)  # a (re)started worker: ask from the start
        await self.sync_worker(w)

    def _check_serving(self) -> None:
        if self.pinned:
            return
        try:
            name = self.repo.serving()
            if name != self.serving:
                titles = {it.item_id: it.title for it in self.repo.open(name, verify=False).catalog()}
                # Union: workers switch one by one, and feedback on an item either
                # version knows is meaningful; DeleteItems is how items leave. The new
                # version's titles win (a new dict: the event loop reads the old one meanwhile).
                self.base_titles = {**self.base_titles, **titles}
                self.base_ids = self.base_titles.keys()
                ids = titles
                LOG.info("serving pointer moved %s -> %s: %d items known", self.serving, name, len(ids))
                self.serving = name
        except (RepositoryError, OSError, ValueError) as e:
            LOG.warning("cannot read the serving version: %s", e)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll for other gateways' catalog changes and for hot swaps."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=POLL_S)
                return
            except TimeoutError:
                pass
            try:
                await loop.run_in_executor(None, self._check_serving)
                async with self._write_lock:
                    await self.refresh()
            except Exception as e:  # noqa: BLE001 - keep polling; the store may come back
                LOG.warning("catalog poll failed: %s", e)
