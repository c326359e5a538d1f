"""The export pipeline's language-model step: export, then measure on this catalog.

Perplexity is measured on held-out catalog text ("Title (year) is a Drama
film.") and the grounding rate on real users' prompts (export/llm/grounding_rate.py),
for fp32 and, when int8 is served, for int8 too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export.data import Dataset
from export.llm.grounding_rate import grounding_rate, sample_prompts
from export.llm.onnx_export import export_llm
from export.llm.quality import catalog_text

if TYPE_CHECKING:
    from recgen.config.export import ExportConfig

LOG = logging.getLogger(__name__)

QUALITY_TEXTS = 200
GROUNDING_PROMPTS = 32
# Share of Chinese fine-tuning examples (the outline's zh prompt). llm.json declares
# "locales" only where a check showed coherent Chinese (docs/llm.md).
FINETUNE_ZH_SHARE = 0.1


def held_out_texts(ds: Dataset, n: int = QUALITY_TEXTS, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    picks = rng.choice(ds.n_items, size=min(n, ds.n_items), replace=False)
    return [catalog_text(ds.items[i].title, None, ds.items[i].categories) for i in sorted(picks)]


def export_llm_for_catalog(
    ds: Dataset, opts: ExportConfig, out_dir: Path, factors: np.ndarray, reg: float, alpha: float
) -> dict[str, Any]:
    titles = [it.title for it in ds.items]
    cases = sample_prompts(ds, factors, reg, alpha, GROUNDING_PROMPTS, opts.seed)

    def grounding(llm_dir: Path, precision: str) -> dict[str, Any]:
        res = grounding_rate(llm_dir, titles, cases)
        LOG.info("grounding %s: %s", precision, res)
        return {f"{k}_{precision}": v for k, v in res.items()}

    adapt = None
    if opts.llm_finetune_steps > 0:

        def adapt(hf_dir: Path, work: Path, prefix: str, suffix: str) -> tuple[Path, dict[str, Any]]:
            # Examples from this catalog, in the prompt format of the model being exported.
            from export.llm.examples import build_examples
            from export.llm.finetune import FinetuneConfig, finetune

            cfg = FinetuneConfig(steps=opts.llm_finetune_steps, seed=opts.seed)
            llm_cfg = {"prompt_prefix": prefix, "prompt_suffix": suffix}
            examples = build_examples(
                ds.items, cfg.steps * cfg.batch_size, llm_cfg, opts.seed, zh_share=FINETUNE_ZH_SHARE
            )
            record = finetune(hf_dir, examples, work / "finetuned", cfg, progress=opts.progress)
            return work / "finetuned", {**record, "zh_share": FINETUNE_ZH_SHARE}

    return export_llm(
        opts.llm,
        out_dir,
        wheels_dir=opts.wheels_dir,
        quantize=opts.quantize,
        progress=opts.progress,
        quality_texts=held_out_texts(ds),
        validate=opts.llm is None,
        extra_quality=grounding,
        adapt=adapt,
    )
