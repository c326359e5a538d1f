"""Typed configuration of `recgen serve`, `recgen worker` and `recgen export`.

One frozen dataclass per command (recgen/config/serve.py, worker.py,
export.py): each field is one setting, its default the only default, its
metadata the flag's help. The CLI's parsers are generated from them and the
configs validate themselves once, when built (recgen/config/flags.py also maps
RECGEN_<FLAG> variables and the optional TOML config file, recgen/config/file.py,
onto the same fields: flag, then variable, then file, then default; secrets are
refused on the command line). recgen/config/table.py prints every setting as
README.md's table; recgen/config/common.py holds the settings of every
subcommand (logging, tracing). ExportConfig is imported from recgen.config.export, not from here,
so that the gateway and the workers never load the export code.

Why stdlib dataclasses + argparse and not pydantic-settings: the issue asks
for dataclasses; the serving dependencies are few and pinned (pyproject.toml),
and pydantic + pydantic-core would join every serving image for ~65 flags;
and the command line must stay exactly as it was (flag names, help,
`build_parser()` for the deploy tests), which argparse already is. The
generator is ~200 lines.
"""

from recgen.config.flags import ConfigError
from recgen.config.serve import ServeConfig
from recgen.config.worker import WorkerConfig

__all__ = ["ConfigError", "ServeConfig", "WorkerConfig"]
