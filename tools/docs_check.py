"""Docs that no command produces any more: README.md and docs/*.md checked against the code.

    python -m tools.docs_check [FILE.md ...]      (default: README.md docs/*.md; exit 1 on a problem)

Two checks, on the Markdown text only (nothing is run but `--help`):

1. Every command the docs name exists. A command is a `make TARGET`, `recgen SUB`, or
   `python -m tools.X` / `python -m recgen.X` (also `.venv/bin/...`, after `VAR=value` prefixes,
   `&&`, `;` or `|`) in an inline code span or on a line of a fenced block. The make target must
   be defined in the Makefile or a file it includes; the recgen subcommand must be in
   `recgen --help` and each `--flag` after it in that subcommand's options (or recgen's own);
   the module must exist and each `--flag` must be in its `python -m MODULE --help`. A bare
   `--flag` code span in prose must be an option of some recgen subcommand, of a tool the same
   file names, or listed in OTHER_FLAGS. `python -m pytest PATH[::TEST]` names the tests that
   show a behaviour: its file must exist.
2. Every figure the docs present as measured names its command. A figure block is a Markdown table
   or a fenced block holding a number with a unit (ms, s, %, MiB, x, /s ...). It passes when a
   command (as in 1) is in the block itself, in its section above it (from the nearest heading down to the
   block), or in the FOLLOW lines after it. The exceptions are explicit: a line
   `<!-- docs-check: not measured (why) -->` just above the block, or an entry in EXCEPTIONS.

It does not check that a figure is what its command prints today (the commands take minutes);
only that the command is named and still exists, so that anyone can rerun it.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLLOW = 3  # lines after a figure block that may name its command
MARKER = "<!-- docs-check: not measured"
# (file relative to the repository, the figure block's first line, stripped) -> why it needs no command.
# Files this check's author may not edit carry theirs here; the owner may move each to a marker line.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("docs/scaling.md", "| work | CPU per request | one core serves (at 70 % busy) |"): (
        "arithmetic on figures measured in docs/bench.md and docs/loadtest.md (said above it)"
    ),
    ("docs/scaling.md", "| load | gateway cores | worker cores (plain + text) |"): (
        "the formula above it applied to example loads, not a measurement"
    ),
    ("docs/bench.md", "| stage | before | after |"): (
        "measured with scratch scripts while rewriting the export (said above it); not rerunnable"
    ),
    # Measured, but the command is not named near the table yet (reported to the coordinator).
    (
        "docs/bench.md",
        "| run | load | tok/s @1 / @8 / @32 | ONNX serial | PyTorch serial | @32 / ONNX | @32 / PyTorch "
        "| TTFT p99 @32 / @1 | Recommend / echo |",
    ): "make bench, four runs",
    (
        "docs/bench.md",
        "| catalog | chosen | recall@100 | queries needing the fallback | q/s batch 1 | exact "
        "| q/s batched (64) | exact |",
    ): "make bench (retrieval phase)",
    ("docs/bench.md", "| catalog | head | fallback | q/s batch 1 | q/s batched |"): (
        "make bench (retrieval phase)"
    ),
    ("docs/bench.md", "| efSearch | 64 | 256 | 1024 | 2048 | 4096 |"): "make bench (retrieval phase)",
    ("docs/metrics.md", "| Alert | Fires when | Severity |"): "alert thresholds: a specification",
}

UNIT = re.compile(
    r"(?<![\w.-])\d(?:[\d,]*\d)?(?:\.\d+)?\s?(?:ms|µs|us|s|min|h|MiB|GiB|KiB|MB|GB|KB|%|×|x|/s|req/s|ok/s|tokens/s)"
    r"(?![A-Za-z0-9])"
)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^#{1,6}\s")
SEPARATORS = re.compile(r"\s*(?:&&|\|\||;|\|)\s*")
FLAG = re.compile(r"^--[A-Za-z0-9][A-Za-z0-9-]*")
# A bare `--flag` in prose must be recgen's or a tool's named in the same file, or one of these.
OTHER_FLAGS = {
    "--native": "py-spy record",
    "--health-cmd": "docker run",
    "--rps": "ghz",
}


@dataclass(frozen=True)
class Command:
    kind: str  # "make" | "recgen" | "tool" | "pytest"
    name: str  # the target, the subcommand ("" for bare `recgen`), or the module
    flags: tuple[str, ...]  # --flags; for pytest, the test paths
    text: str


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


# ------------------------------------------------------------------ parsing commands


def _tokens(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose: split on spaces
        return text.split()


def commands_in(text: str) -> list[Command]:
    """The make / recgen / python -m tools commands in one line or code span."""
    out = []
    for part in SEPARATORS.split(text.replace("\\\n", " ")):
        toks = _tokens(part.strip().removeprefix("$ "))
        while toks and re.match(r"^[A-Z_][A-Z0-9_]*=", toks[0]):  # VAR=value make ...
            toks.pop(0)
        if not toks:
            continue
        if toks[0].endswith("/"):  # a directory in a layout listing, e.g. recgen/
            continue
        head, rest = Path(toks[0]).name, toks[1:]
        flags = tuple(m.group(0) for t in rest if (m := FLAG.match(t)))
        if head == "make" and toks[0] in ("make", "$(MAKE)"):
            for t in rest:
                if not t.startswith("-") and "=" not in t:
                    out.append(Command("make", t, (), part.strip()))
        elif head == "recgen":
            out.append(Command("recgen", _subcommand(rest), flags, part.strip()))
        elif re.fullmatch(r"python3?(\.\d+)?", head) and rest[:1] == ["-m"] and len(rest) > 1:
            if rest[1] == "pytest":  # the tests that show a behaviour: each named path must exist
                paths = tuple(t for t in rest[2:] if not t.startswith("-"))
                out.append(Command("pytest", "pytest", paths, part.strip()))
            elif rest[1] == "recgen.cli":
                out.append(Command("recgen", _subcommand(rest[2:]), flags, part.strip()))
            elif rest[1].split(".")[0] in ("tools", "recgen"):
                out.append(Command("tool", rest[1], flags, part.strip()))
    return out


def _subcommand(args: Sequence[str]) -> str:
    """The first word after `recgen` and its own options (whose values are skipped)."""
    takes_value = {a for a, n in _recgen_global_options().items() if n}
    skip = False
    for t in args:
        if skip:
            skip = False
        elif t.startswith("-"):
            skip = "=" not in t and t in takes_value
        else:
            return t
    return ""


# ------------------------------------------------------------------ what exists


@functools.cache
def make_targets(makefile: Path = ROOT / "Makefile") -> frozenset[str]:
    """Targets defined in the Makefile and the files it includes (those that exist)."""
    names: set[str] = set()
    todo, seen = [makefile], set()
    while todo:
        f = todo.pop()
        if f in seen or not f.is_file():
            continue
        seen.add(f)
        for line in f.read_text().splitlines():
            if m := re.match(r"^-?include\s+(.+)$", line):
                todo += [f.parent / p for p in m.group(1).split()]
            elif (m := re.match(r"^([^\s#=:][^=:]*?)\s*::?(?!=)", line)) and not line.startswith("\t"):
                names.update(t for t in m.group(1).split() if "$" not in t and not t.startswith("."))
    return frozenset(names)


def _recgen_parser() -> argparse.ArgumentParser:
    from recgen.cli import build_parser

    return build_parser()


@functools.cache
def _recgen_global_options() -> dict[str, bool]:
    """recgen's own option strings -> whether the option takes a value."""
    return {o: a.nargs != 0 for a in _recgen_parser()._actions for o in a.option_strings}


@functools.cache
def recgen_subcommands() -> dict[str, frozenset[str]]:
    """{subcommand: its option strings and recgen's own}, from the parser `recgen --help` prints."""
    parser = _recgen_parser()
    common = set(_recgen_global_options())
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = frozenset(common | set(sub._option_string_actions))
    return out


@functools.cache
def tool_options(module: str) -> frozenset[str] | None:
    """The --flags `python -m MODULE --help` prints, or None when there is no such module."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except ModuleNotFoundError:
        return None
    r = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if r.returncode != 0:
        return frozenset()  # reported by the caller: a --help that fails is itself broken
    return frozenset(re.findall(r"(?<![\w-])--[A-Za-z0-9][A-Za-z0-9-]*", r.stdout))


def command_problems(cmd: Command) -> list[str]:
    if cmd.kind == "pytest":  # `flags` holds the test paths; <placeholders> are not checked
        missing = [p for p in cmd.flags if "<" not in p and not (ROOT / p.split("::")[0]).exists()]
        return [f"`{cmd.text}`: no such test path {p}" for p in missing]
    if cmd.kind == "make":
        return [] if cmd.name in make_targets() else [f"`make {cmd.name}`: no such Makefile target"]
    if cmd.kind == "recgen":
        subs = recgen_subcommands()
        if not cmd.name:
            known = set(_recgen_global_options()) | {"-h", "--help"}
            return [f"`{cmd.text}`: recgen has no option {f}" for f in cmd.flags if f not in known]
        if cmd.name not in subs:
            return [f"`recgen {cmd.name}`: no such subcommand (recgen --help)"]
        return [f"`{cmd.text}`: `recgen {cmd.name}` has no {f}" for f in cmd.flags if f not in subs[cmd.name]]
    opts = tool_options(cmd.name)
    if opts is None:
        return [f"`python -m {cmd.name}`: no such module"]
    if not opts:
        return [f"`python -m {cmd.name} --help` fails"]
    return [
        f"`{cmd.text}`: `python -m {cmd.name}` has no {f}" for f in cmd.flags if f not in opts | {"--help"}
    ]


# ------------------------------------------------------------------ the Markdown


@dataclass
class Block:
    start: int  # 0-based index of its first line (the fence, for a fenced block)
    end: int  # one past its last line
    lines: list[str]
    fenced: bool


def blocks(lines: Sequence[str]) -> Iterator[Block]:
    """Fenced blocks and Markdown tables, in order."""
    i = 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            j = i + 1
            while j < len(lines) and not FENCE.match(lines[j]):
                j += 1
            yield Block(i, min(j + 1, len(lines)), list(lines[i + 1 : j]), True)
            i = j + 1
        elif lines[i].lstrip().startswith("|"):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            yield Block(i, j, list(lines[i:j]), False)
            i = j
        else:
            i += 1


def commands_of_lines(lines: Sequence[str], start: int, in_block: dict[int, Block]) -> list[Command]:
    """Commands on lines[start:] as numbered in the file: code spans in prose, and whole lines (a
    continued line joined) inside a fenced block."""
    out: list[Command] = []
    pending = ""
    for i, line in enumerate(lines, start):
        b = in_block.get(i)
        if b is not None and b.fenced:
            if i == b.start or i == b.end - 1 and FENCE.match(line):
                continue
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out += commands_in(pending + line)
            pending = ""
        else:
            for span in SPAN.findall(line):
                out += commands_in(span)
    return out


def check_text(path: str, text: str) -> list[Problem]:
    lines = text.splitlines()
    problems: list[Problem] = []
    bs = list(blocks(lines))
    in_block = {i: b for b in bs for i in range(b.start, b.end)}
    # 1. the commands, each reported on its own line
    for i in range(len(lines)):
        for cmd in commands_of_lines(lines[i : i + 1], i, in_block):
            problems += [Problem(path, i + 1, m) for m in command_problems(cmd)]
    # 1b. a bare `--flag` in prose: recgen's (any subcommand) or a tool's this file names
    tools = {c.name for c in commands_of_lines(lines, 0, in_block) if c.kind == "tool"}
    known = set(OTHER_FLAGS).union(*recgen_subcommands().values())
    for t in tools:
        known |= tool_options(t) or set()
    for i, line in enumerate(lines):
        if i in in_block and in_block[i].fenced:
            continue
        for span in SPAN.findall(line):
            m = FLAG.match(span.strip())
            if m and m.group(0) not in known:
                problems.append(Problem(path, i + 1, f"`{m.group(0)}`: no recgen or tool named here has it"))
    # 2. the figures
    for b in bs:
        if not any(UNIT.search(line) for line in b.lines):
            continue
        first = next((ln.strip() for ln in b.lines if ln.strip()), "")
        above = b.start
        while above > 0 and not HEADING.match(lines[above - 1]):
            above -= 1
        if b.start > 0 and lines[b.start - 1].strip().startswith(MARKER):
            continue
        if (path, first) in EXCEPTIONS:
            continue
        end = min(len(lines), b.end + FOLLOW)
        named = commands_of_lines(lines[above:end], above, in_block)
        if not named:
            problems.append(
                Problem(
                    path,
                    b.start + 1,
                    f"figures ({first[:60]!r}) name no command: put `make X` / `recgen ...` / "
                    f"`python -m tools...` in the section above or in the {FOLLOW} lines after",
                )
            )
    return problems


def default_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def prefetch_tools(texts: Iterable[str]) -> None:
    """Each tool's `--help`, all at once: one Python start each, side by side instead of in turn."""
    modules = set()
    for text in texts:
        lines = text.splitlines()
        in_block = {i: b for b in blocks(lines) for i in range(b.start, b.end)}
        modules |= {c.name for c in commands_of_lines(lines, 0, in_block) if c.kind == "tool"}
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(tool_options, sorted(modules)))


def check_files(files: Iterable[Path], root: Path = ROOT) -> list[Problem]:
    texts = {f: f.read_text() for f in files}
    prefetch_tools(texts.values())
    out = []
    for f, text in texts.items():
        rel = str(f.resolve().relative_to(root)) if f.resolve().is_relative_to(root) else str(f)
        out += check_text(rel, text)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.docs_check", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md docs/*.md)")
    args = p.parse_args(argv)
    problems = check_files(args.files or default_files())
    for prob in problems:
        print(prob)
    print(f"docs_check: {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
