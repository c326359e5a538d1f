"""One loaded model version: every component the worker serves with.

Loading verifies the version (format and checksums), opens the ONNX
sessions with explicit providers and thread counts, reads the FAISS index,
and `warmup()` runs a real forward pass through each model before the
worker reports SERVING.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recgen.config import WorkerConfig
from recgen.core.content_map import CONTENT_MAP_FILE, load_content_map
from recgen.core.foldin import FoldIn
from recgen.core.formats import (
    ENCODER_DIR,
    INDEX_FILE,
    ITEM_FACTORS_FILE,
    ITEM_POPULARITY_FILE,
    LLM_CONFIG_FILE,
    LLM_DIR,
    SCORER_FILE,
)
from recgen.core.user_history import USERS_DIR, History, UserHistories, empty_history
from recgen.repository import CatalogItem, ModelRepository, ModelVersion
from worker.context import ContextModel, JobContext
from worker.folded_users import FoldedUsers
from worker.metrics import Metrics
from worker.onnx_session import providers_for
from worker.ranking import Ranker, RankJob
from worker.retrieval import Retriever
from worker.scoring import Scorer

LOG = logging.getLogger(__name__)

HELD_CACHE = 4096  # training users whose held history stays decoded (most recently asked)


@dataclass
class LoadedModel:
    version: ModelVersion
    catalog: list[CatalogItem]
    item_index: dict[str, int]
    ranker: Ranker
    llm: Any | None  # worker.llm.engine.Generator when the version has an LLM
    llm_cfg: dict[str, Any] | None
    checker: Any | None  # recgen.core.grounding.GroundingChecker
    categories: dict[str, np.ndarray] = field(default_factory=dict)  # lower-cased -> (n,) bool
    # The version's text encoder and its map into MF space, loaded once and shared
    # (intent at ranking time, item text for live catalog updates); None without one.
    encoder: Any | None = None  # worker.encoder.TextEncoder
    content_map: np.ndarray | None = None  # (e + 1, d)
    content_rows: set[int] = field(default_factory=set)  # live-added rows: factors from their text
    # The training users' histories this version holds (recgen/core/user_history.py); None for
    # versions built before versions carried them.
    users: UserHistories | None = None
    data_end: float = float("-inf")  # newest event time in the version's data (its watermark)
    forgotten_through: float = 0.0  # ForgetUser tombstones up to this time were applied by export
    # The recently ranked users' fold-in inputs and vectors (worker/folded_users.py): per
    # version, since both depend on its held histories and factors.
    folded_users: FoldedUsers = field(default_factory=FoldedUsers)

    def __post_init__(self) -> None:
        # The held histories are immutable per version and read from memory-mapped CSR arrays
        # (cheap to hold at 1M users, ~40 µs to decode one): the recently asked users stay
        # decoded, read-only, so a busy user's rows are not decoded on every request.
        self._held: Callable[[str], History] | None = (
            None if self.users is None else functools.lru_cache(maxsize=HELD_CACHE)(self._decode_held)
        )

    def _decode_held(self, user_id: str) -> History:
        assert self.users is not None
        h = self.users.get(user_id)
        for a in (h.rows, h.weights, h.ts, h.seen):
            a.flags.writeable = False  # shared by every request of this user: never changed in place
        return h

    def held_history(self, user_id: str, forgotten_at: float = 0.0) -> History:
        """What the version holds of a user; nothing for an unknown user, and nothing for
        one forgotten after the version's data was taken (the tombstone wins at once)."""
        if self._held is None or not user_id or forgotten_at > self.forgotten_through:
            return empty_history()
        return self._held(user_id)

    def allowed_by_categories(self, include: list[str], exclude: list[str]) -> np.ndarray | None:
        """(n,) bool mask of items passing the category filters; None when there are none."""
        if not include and not exclude:
            return None
        n = len(self.catalog)
        none = np.zeros(n, dtype=bool)
        mask = np.ones(n, dtype=bool)
        if include:
            mask = np.zeros(n, dtype=bool)
            for c in include:
                mask |= self.categories.get(c.lower(), none)
        for c in exclude:
            mask &= ~self.categories.get(c.lower(), none)
        return mask

    @property
    def name(self) -> str:
        return self.version.name

    @staticmethod
    def load(
        root: Path, version: str | None, cfg: WorkerConfig, metrics: Metrics, *, prefix_cache: bool = True
    ) -> LoadedModel:
        """prefix_cache: compute the outline prompts' shared start once (False: prefill every
        prompt whole, the engine before it; for measurements, tools/text_eval)."""
        t = time.perf_counter()
        mv = ModelRepository(root).open(version, verify=True)
        catalog = mv.catalog()
        factors = np.load(mv.file(ITEM_FACTORS_FILE))
        popularity = np.load(mv.file(ITEM_POPULARITY_FILE))
        assert factors.shape[0] == len(catalog), (factors.shape, len(catalog))
        mf = mv.manifest.params["mf"]
        providers = providers_for(cfg.device)
        ranker = Ranker(
            factors=factors,
            popularity=popularity,
            foldin=FoldIn(factors, float(mf["reg"])),
            retriever=Retriever(mv.file(INDEX_FILE), mv.manifest.params.get("index", {}), cfg.threads),
            scorer=Scorer(mv.file(SCORER_FILE), threads=cfg.threads, providers=providers),
            alpha=float(mf["alpha"]),
            metrics=metrics,
            shard=(cfg.shard_index, cfg.shard_count),
        )
        encoder = content_map = None
        if (mv.path / ENCODER_DIR / CONTENT_MAP_FILE).is_file():
            from worker.encoder import TextEncoder

            encoder = TextEncoder(mv.path / ENCODER_DIR, threads=cfg.threads, providers=providers)
            content_map = load_content_map(
                mv.path / ENCODER_DIR / CONTENT_MAP_FILE, dim=encoder.dim, factors=factors.shape[1]
            )
        ranker.context = ContextModel.load(mv.path, encoder, content_map)
        llm = llm_cfg = checker = None
        if (mv.path / LLM_DIR / LLM_CONFIG_FILE).is_file():
            from recgen.core.explain_outline import shared_prompt_head
            from recgen.core.grounding import GroundingChecker
            from worker.llm.engine import Generator

            llm_cfg = json.loads((mv.path / LLM_DIR / LLM_CONFIG_FILE).read_text())
            # No spinning: idle ORT threads busy-waiting would steal the cores
            # that the ranking batches and the other workers need. The cached prefix is
            # everything the served (outline) prompts share, computed from recgen.core, so
            # versions exported before it benefit too; at int8 too (exactness measured
            # in docs/text.md: caching is a serving feature, the baselines prefill whole).
            llm = Generator(
                mv.path / LLM_DIR,
                threads=cfg.threads,
                providers=tuple(providers),
                max_seqs=cfg.max_seqs,
                max_queue=cfg.max_queue,
                allow_spinning=False,
                cache_prefix=prefix_cache,
                prefix_text=shared_prompt_head(llm_cfg),
            )
            # Word boundaries: text streams word by word, and an ungrounded mention
            # cuts the text right before it ("stops there"), not a sentence earlier.
            checker = GroundingChecker([it.title for it in catalog], boundary="word")
        users = None
        held = mv.manifest.params.get("users", {})
        if UserHistories.exists(mv.path):
            users = UserHistories(mv.path / USERS_DIR, n_items=len(catalog))
        categories: dict[str, np.ndarray] = {}
        for i, it in enumerate(catalog):
            for c in it.categories:
                categories.setdefault(c.lower(), np.zeros(len(catalog), dtype=bool))[i] = True
        LOG.info(
            "loaded model version %s (%d items, %d known users, llm=%s) in %.1f s",
            mv.name,
            len(catalog),
            0 if users is None else len(users),
            bool(llm),
            time.perf_counter() - t,
        )
        return LoadedModel(
            mv,
            catalog,
            {it.item_id: i for i, it in enumerate(catalog)},
            ranker,
            llm,
            llm_cfg,
            checker,
            categories,
            encoder=encoder,
            content_map=content_map,
            users=users,
            data_end=float(held.get("data_end", float("-inf"))),
            forgotten_through=float(held.get("forgotten_through", 0.0)),
            folded_users=FoldedUsers(metrics=metrics),
        )

    def warmup(self) -> None:
        """Real forward passes through every model: readiness means it works."""
        t = time.perf_counter()
        empty = np.zeros(0, np.int64)
        hist = np.arange(min(3, len(self.catalog)), dtype=np.int64)
        res = self.ranker.rank(
            [
                RankJob(empty, np.zeros(0, np.float32), empty, 10),
                RankJob(hist, np.ones(hist.size, np.float32), empty, 10),
            ]
        )
        assert len(res) == 2 and res[1].rows.size > 0, "warm-up ranking returned nothing"
        if self.ranker.context is not None:  # the context path too (the encoder, when intent is on)
            ctx = JobContext(hour=20, weekday=5, intent="something funny")
            self.ranker.rank(
                [
                    RankJob(empty, np.zeros(0, np.float32), empty, 10, context=ctx),
                    RankJob(hist, np.ones(hist.size, np.float32), empty, 10, context=ctx),
                ]
            )
        if self.llm is not None and self.llm_cfg is not None:
            self.llm.start()
            self.llm.generate_alone(
                self.llm_cfg.get("prompt_prefix", "") + "Hello" + self.llm_cfg.get("prompt_suffix", ""),
                max_new_tokens=2,
            )
        LOG.info("warm-up done in %.2f s", time.perf_counter() - t)

    def close(self) -> None:
        if self.llm is not None:
            self.llm.stop()

    def release(self) -> None:
        """Close, then let go of the parts that hold most memory (the LLM's and the encoder's
        ONNX sessions and arenas, the held histories): a retired version can stay referenced
        a while longer (a stream's suspended generator, say), and it must not keep those alive.
        Only for a version no request uses any more (worker/swap.py)."""
        self.close()
        self.llm = None
        self.encoder = None
        self.users = None
        self._held = None
