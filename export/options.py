"""`recgen export`'s options: one dataclass, its defaults in one place.

The export steps (export/pipeline.py and the step modules it calls) read it;
the CLI builds it (export/pipeline.py run_export). Nothing here runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ExportOptions:
    llm: str | None = None  # None: the default SmolLM2 from the wheel
    with_llm: bool = True
    with_encoder: bool = True
    with_context: bool = True  # learn what request context adds (export/context.py)
    quantize: str = "int8"
    factors: int | None = None  # None: tuned
    reg: float | None = None
    alpha: float | None = None
    iterations: int = 15
    recall_target: float = 0.95
    exact_max_items: int | None = None
    seed: int = 0
    progress: bool = True
    evaluate_ease: bool = True
    ease_max_seconds: float = 900.0  # EASE is skipped, with its reason recorded, if estimated longer
    max_memory: int | None = None  # bytes for the whole export; None: half the RAM (export/budget.py)
    wheels_dir: Path = field(default_factory=lambda: Path(".cache/wheels"))
    # `export --feedback`: ForgetUser tombstones up to this time were applied (their users'
    # data dropped); workers hide version-held history only of users forgotten later.
    forgotten_through: float = 0.0
