"""How often the LLM's text names only items that were in its prompt.

For a sample of real users: history = their 3 newest items, recommended =
the top 3 of the MF model for them (seen items excluded), the prompt exactly
as the worker builds it; greedy text, `max_new_tokens` as served; the
grounding checker over the whole text. Uses the serving modules (onnxruntime,
no torch) so the number describes what users would see.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.data import Dataset, iter_user_histories
from recgen.core.foldin import FoldIn
from recgen.core.grounding import GroundingChecker
from recgen.core.prompt import RESPONSE_PRIMER, build_prompt, build_user_message
from worker.llm.engine import Generator

LOG = logging.getLogger(__name__)


def sample_prompts(
    ds: Dataset, factors: np.ndarray, reg: float, alpha: float, n: int, seed: int = 0
) -> list[tuple[list[int], list[int]]]:
    """[(history rows newest first, recommended rows)] for n sampled users."""
    rng = np.random.default_rng(seed)
    hists = [rows for _, rows in iter_user_histories(ds)]
    picks = rng.choice(len(hists), size=min(n, len(hists)), replace=False)
    fold = FoldIn(factors, reg)
    out = []
    for p in sorted(picks):
        items = list(dict.fromkeys(int(i) for i in ds.item[hists[p]][::-1]))  # newest first
        vec = fold.user_vectors([(np.asarray(items), np.full(len(items), 1 + alpha, np.float32))])
        scores = factors @ vec[0]
        scores[items] = -np.inf
        out.append((items[:3], [int(i) for i in np.argsort(-scores)[:3]]))
    return out


def grounding_rate(
    llm_dir: Path,
    titles: list[str],
    cases: list[tuple[list[int], list[int]]],
    *,
    max_new_tokens: int = 48,
    threads: int = 2,
) -> dict[str, Any]:
    checker = GroundingChecker(titles, boundary="word")
    gen = Generator(llm_dir, threads=threads, max_seqs=len(cases), allow_spinning=False)
    cfg = gen.config
    prompts = [
        build_prompt(cfg, build_user_message([titles[i] for i in h], [titles[i] for i in r]), RESPONSE_PRIMER)
        for h, r in cases
    ]

    async def run() -> list[str]:
        handles = [gen.submit(p, max_new_tokens=min(max_new_tokens, gen.room_for(p))) for p in prompts]
        return [RESPONSE_PRIMER + (await h.result())[0] for h in handles]

    with gen:
        texts = asyncio.run(run())
    grounded = names_recommended = 0
    for (h, r), text in zip(cases, texts, strict=True):
        res = checker.check(text, set(h) | set(r))
        grounded += res.ok
        names_recommended += any(m.item_index in r for m in res.mentions)
    n = len(cases)
    return {
        "grounding_rate": round(grounded / n, 4),
        "names_a_recommended_item": round(names_recommended / n, 4),
        "grounding_prompts": n,
        "sample_text": texts[0],
    }
