"""`python -m recgen.config.table`: the markdown table of every setting, from the dataclasses.

One row per setting: its flag, its RECGEN_* variable, its config file key (section and
field name), its default and its help. README.md carries the output between its
`<!-- settings:begin -->` and `<!-- settings:end -->` markers; tests/unit/test_config.py
checks that the two agree, so a setting added to a config class shows up in the README
or the test fails. `--write README.md` rewrites that block in place.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from recgen.config.common import CONFIG_HELP, GLOBALS
from recgen.config.file import ENV as CONFIG_ENV
from recgen.config.flags import Setting, section, settings
from recgen.config.serve import ServeConfig
from recgen.config.worker import WorkerConfig

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
HEAD = "| Flag | Variable | Config file | Default | Meaning |\n|---|---|---|---|---|"


def _cell(text: str) -> str:
    return " ".join(text.replace("%%", "%").replace("|", "\\|").split())


def _default(s: Setting) -> str:
    value = s.default()
    if s.flag.required:
        return "required"
    if s.kind is bool:
        return "true" if value else "false"
    if value is None or value == () or value == "":
        return "—"
    return f"`{s.flag.show(value)}`"


def _row(s: Setting, sect: str) -> str:
    option = s.option if not s.flag.both else f"{s.option} / --no-{s.option[2:]}"
    flags, env = f"`{option}`", f"`{s.env}`"
    meaning = s.flag.help or ""
    if s.flag.secret is not None:
        flags += f"<br>`{s.file_option}`"
        env += f"<br>`{s.file_env}`"
        meaning += " — a secret: refused on the command line; give the variable, the file or the config file"
    if s.flag.negate:
        meaning += f" ({s.option} or {s.env}=1 sets {s.name} = false)"
    return f"| {flags} | {env} | `[{sect}] {s.name}` | {_default(s)} | {_cell(meaning)} |"


def _rows(cls: type, *, serve_side: bool = False, only_per_process: bool = False) -> list[str]:
    out = []
    for s in settings(cls, serve_side=serve_side):
        if isinstance(s, tuple):
            out += _rows(s[1], serve_side=True)
        elif not only_per_process or s.flag.per_process:
            out.append(_row(s, section(cls)))
    return out


def table() -> str:
    from recgen.config.export import ExportConfig  # the export's settings (a tool may import it)

    glob = [
        f"| `{g.option}` | `{g.env}` | `{g.dest}` (top level) | "
        f"{f'`{g.default}`' if g.default else '—'} | {_cell(g.help)} |"
        for g in GLOBALS
    ]
    glob.append(f"| `--config FILE` | `{CONFIG_ENV}` | — | — | {_cell(CONFIG_HELP)} |")
    parts = [
        "### Every setting",
        "",
        "A flag beats its variable, which beats the config file (`--config FILE`, TOML; keys as in "
        "the third column), which beats the default. Secrets are refused on the command line. "
        "Generated from `recgen/config/` by `python -m recgen.config.table --write README.md`.",
        "",
        "Every command (before or after the subcommand's name):",
        "",
        HEAD,
        *glob,
        "",
        "`recgen serve` (the `[worker]` rows also reach its local workers):",
        "",
        HEAD,
        *_rows(ServeConfig),
        "",
        "`recgen worker` takes the `[worker]` rows above, and its own:",
        "",
        HEAD,
        *_rows(WorkerConfig, only_per_process=True),
        "",
        "`recgen export`:",
        "",
        HEAD,
        *_rows(ExportConfig),
    ]
    return "\n".join(parts) + "\n"


def block(text: str) -> str:
    """The settings block of a README's text (between the markers, markers excluded)."""
    m = re.search(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), text, re.S)
    if m is None:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return m.group(1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", metavar="README", help="rewrite the block between the markers in this file")
    args = p.parse_args(argv)
    out = table()
    if not args.write:
        sys.stdout.write(out)
        return 0
    path = Path(args.write)
    text = path.read_text()
    old = block(text)
    path.write_text(text.replace(BEGIN + "\n" + old + END, BEGIN + "\n" + out + END))
    return 0


if __name__ == "__main__":
    sys.exit(main())
