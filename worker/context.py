"""Request context at serve time: what the version learned, applied in batch.

`export.context` decides, per feature and per kind of user (warm: has
history; cold: has none), whether a context feature helped on held-out data
and with what weight; this module applies exactly that and nothing more:

- time: a per-item log-lift of the request's local-time bucket (hour block,
  weekend or not), added to the candidates' scores (warm) or to log
  popularity (cold);
- intent: the free text embedded by the version's encoder and mapped by its
  content map into MF item space; warm users' vectors are blended toward it
  before retrieval (so intent items can be fetched at all), cold users'
  popular items are re-ranked by its cosine;
- device, locale: not learned from the default data; accepted and ignored.

A feature the version switched off, or context the request does not carry,
contributes exactly nothing, so such answers are identical to context-free
ones. numpy only; the encoder call is one per batch, for the distinct
intents present.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recgen.core.context_features import HOUR_BUCKETS, hour_bucket, weekend_flag
from recgen.core.formats import CONTEXT_DIR, CONTEXT_FILE, CONTEXT_FORMAT, HOUR_LIFT_FILE, WEEKEND_LIFT_FILE

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """One request's context as the worker sees it; defaults mean 'unknown'."""

    hour: int = -1
    weekday: int = -1
    device: str = ""  # not learned: carried for logs and future versions, never scored
    locale: str = ""  # likewise
    intent: str = ""


@dataclass
class ContextModel:
    """Learned lifts and weights of one version (see export.context)."""

    weights: dict[str, dict[str, float]]  # "warm"/"cold" -> feature -> weight (0 = off)
    hour_lift: np.ndarray | None = None  # (n, HOUR_BUCKETS)
    weekend_lift: np.ndarray | None = None  # (n, 2)
    encoder: Any | None = None  # worker.encoder.TextEncoder, shared with the rest of the worker
    content_map: np.ndarray | None = None  # (e + 1, d)
    features: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def load(version_dir: Path, encoder: Any | None, content_map: np.ndarray | None) -> ContextModel | None:
        """None when the version has no context model (older versions): context is ignored."""
        d = version_dir / CONTEXT_DIR
        if not (d / CONTEXT_FILE).is_file():
            return None
        cfg = json.loads((d / CONTEXT_FILE).read_text())
        if cfg.get("format") != CONTEXT_FORMAT:
            raise ValueError(
                f"{d / CONTEXT_FILE}: format {cfg.get('format')!r}, this recgen reads {CONTEXT_FORMAT}"
            )
        if cfg.get("hour_buckets") != HOUR_BUCKETS:
            raise ValueError(
                f"{d / CONTEXT_FILE}: {cfg.get('hour_buckets')} hour buckets, expected {HOUR_BUCKETS}"
            )
        weights = {m: {f: float(w) for f, w in cfg["weights"][m].items()} for m in ("warm", "cold")}
        hour = np.load(d / HOUR_LIFT_FILE) if (d / HOUR_LIFT_FILE).is_file() else None
        weekend = np.load(d / WEEKEND_LIFT_FILE) if (d / WEEKEND_LIFT_FILE).is_file() else None
        for m in weights:
            if weights[m].get("hour") and hour is None or weights[m].get("weekday") and weekend is None:
                raise ValueError(f"{d}: a time feature is on but its lift table is missing")
            if weights[m].get("intent") and (encoder is None or content_map is None):
                LOG.warning("context: intent was learned but the version has no encoder; ignoring intent")
                weights[m]["intent"] = 0.0
        return ContextModel(weights, hour, weekend, encoder, content_map, cfg.get("features", {}))

    def uses_intent(self) -> bool:
        return any(self.weights[m].get("intent", 0.0) for m in self.weights)

    def intent_vectors(self, intents: Sequence[str]) -> np.ndarray | None:
        """(B, d) unit intent vectors in MF space (zero rows: no intent); None if none apply.

        One encoder call for the distinct non-empty intents of the batch.
        """
        if not self.uses_intent() or not any(intents):
            return None
        from recgen.core.content_map import apply_content_map

        assert self.encoder is not None and self.content_map is not None
        uniq = sorted({t for t in intents if t})
        q = apply_content_map(self.content_map, self.encoder.encode(uniq))
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        at = {t: i for i, t in enumerate(uniq)}
        out = np.zeros((len(intents), q.shape[1]), np.float32)
        rows = [i for i, t in enumerate(intents) if t]
        out[rows] = q[[at[intents[i]] for i in rows]]
        return out

    def blend_users(self, users: np.ndarray, q: np.ndarray | None) -> np.ndarray:
        """Warm users pulled toward their intent: u + λ·|u|·q̂ (rows without intent unchanged)."""
        lam = self.weights["warm"].get("intent", 0.0)
        if q is None or not lam:
            return users
        norm = np.linalg.norm(users, axis=1, keepdims=True)
        return (users + lam * norm * q).astype(np.float32)

    def time_term(
        self, mode: str, hours: np.ndarray, weekdays: np.ndarray, rows: np.ndarray
    ) -> np.ndarray | None:
        """(B, C) weighted time lifts of item rows (B, C) for each job's hour and weekday.

        Rows outside the lift tables (items added after export, padding -1) and
        jobs without a known hour/weekday get 0. None when nothing applies.
        """
        w = self.weights[mode]
        out: np.ndarray | None = None
        for key, table, bucket in (
            ("hour", self.hour_lift, hour_bucket(hours)),
            ("weekday", self.weekend_lift, weekend_flag(weekdays)),
        ):
            if not w.get(key) or table is None or not (bucket >= 0).any():
                continue
            ok = (rows >= 0) & (rows < table.shape[0]) & (bucket[:, None] >= 0)
            vals = table[np.where(ok, rows, 0), np.maximum(bucket, 0)[:, None]]  # (B, C)
            term = w[key] * np.where(ok, vals, 0.0).astype(np.float32)
            out = term if out is None else out + term
        return out

    def cold_scores(
        self,
        base: np.ndarray,
        unit_factors: np.ndarray,
        rows: np.ndarray,
        ctx: Sequence[JobContext],
        q: np.ndarray | None,
    ) -> np.ndarray | None:
        """(B, C) context-aware cold scores of candidate rows (B, C); None if no context applies.

        base: (B, C) log(1 + popularity) of the rows, the score without context.
        """
        hours = np.asarray([c.hour for c in ctx], np.int64)
        weekdays = np.asarray([c.weekday for c in ctx], np.int64)
        term = self.time_term("cold", hours, weekdays, rows)
        lam = self.weights["cold"].get("intent", 0.0)
        if q is not None and lam:
            safe = np.where(rows >= 0, rows, 0)
            cos = np.einsum("bcd,bd->bc", unit_factors[safe], q)  # zero rows of q: no intent
            term = lam * cos if term is None else term + lam * cos
        if term is None:
            return None
        return (base + term).astype(np.float32)
