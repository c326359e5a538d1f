"""Flags and RECGEN_* variables generated from the config dataclasses, and back.

A setting is a dataclass field made with `setting(default, help=...)`: the
field's default is the only default, and its metadata carries the flag's help.
`add_flags` turns a config class into argparse arguments, `from_args` turns the
parsed flags into a validated config, `to_argv` writes a config back as the
flags that rebuild it (how `recgen serve` starts its local workers).

Environment: RECGEN_<FLAG> (`--max-seqs` → RECGEN_MAX_SEQS, `--no-llm` →
RECGEN_NO_LLM=1) gives a flag's value when the flag is absent; a config file
(`--config FILE`, TOML: recgen/config/file.py) gives it when neither is, under
the section named after the command's config ([serve], [worker], [export]) and
the field's name as key. So precedence is flag, then variable, then file, then
the field's default. Variables and file values become argparse defaults when a
parser is built; an unreadable one is reported, naming the variable (or file
and key), only by the command that uses it. Booleans take 1/0, true/false,
yes/no, on/off; an empty variable counts as unset.

Secrets (`secret=`: a predicate saying whether a value holds one, e.g. a
database URL with a password) are refused on the command line, where `ps`
shows every process's arguments to every user: such a setting also gets a
`--NAME-file FILE` flag (variable RECGEN_NAME_FILE) that reads the value from
a file, and its variable is accepted. --help never shows a variable's or a
file's value. This module reads the environment only when asked to build a
parser, and knows no command's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, TypeVar

ENV_PREFIX = "RECGEN_"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_WHAT = {int: "an integer", float: "a number"}

C = TypeVar("C")


class ConfigError(ValueError):
    """A setting is malformed or contradicts another; the message names the flag or variable."""


@dataclass(frozen=True)
class Flag:
    help: str = ""
    name: str = ""  # default: --field-name
    parse: Callable[[str], Any] | None = None  # text -> value (default: the field's type)
    show: Callable[[Any], str] = str  # value -> text for to_argv; parse(show(v)) == v
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    required: bool = False  # the flag or its variable must be given
    negate: bool = False  # a bool the flag turns off: --no-llm sets with_llm=False
    per_process: bool = False  # a worker's own (listen, shard, ...): not a `serve` flag
    both: bool = False  # a bool with --name and --no-name (argparse.BooleanOptionalAction)
    # value -> whether it holds a secret (refused on the command line; gets --NAME-file)
    secret: Callable[[Any], bool] | None = None


def holds_password(value: Any) -> bool:
    """Whether a connection string carries a password: scheme://USER:PASSWORD@HOST, or a libpq
    keyword string with password=... (a `secret=` predicate)."""
    if not isinstance(value, str):
        return False
    scheme, sep, rest = value.partition("://")
    if sep and scheme and ":" in rest.partition("@")[0] and "@" in rest.split("/", 1)[0]:
        return True
    return "password=" in value.replace(" ", "").lower()


def setting(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **flag: Any) -> Any:
    """A dataclass field that is also a command-line flag (keywords: Flag's)."""
    meta = {"flag": Flag(**flag)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def nested(factory: Callable[[], Any]) -> Any:
    """A field holding another config, whose flags (but per-process ones) join this command's."""
    return field(default_factory=factory, metadata={"nested": True})


@dataclass(frozen=True)
class _BadEnv:
    """An argparse default standing for a variable that did not parse: reported by from_args."""

    message: str


@dataclass(frozen=True)
class Setting:
    """One flag-carrying field of a config class, with its resolved type."""

    field: dataclasses.Field[Any]
    flag: Flag
    kind: Any  # int, float, str, bool, Path, tuple[str, ...], ... (None stripped)

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def option(self) -> str:
        return self.flag.name or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.option.lstrip("-").upper().replace("-", "_")

    @property
    def file_option(self) -> str:
        """--NAME-file, for a secret setting."""
        return self.option + "-file"

    @property
    def file_env(self) -> str:
        return self.env + "_FILE"

    @property
    def repeated(self) -> bool:
        return typing.get_origin(self.kind) is tuple and typing.get_args(self.kind)[1:] == (...,)

    def parser(self) -> Callable[[str], Any]:
        if self.flag.parse is not None:
            return self.flag.parse
        return typing.get_args(self.kind)[0] if self.repeated else self.kind

    def default(self) -> Any:
        f = self.field
        return f.default_factory() if f.default_factory is not MISSING else f.default


def _strip_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def settings(cls: type, *, serve_side: bool = False) -> list[Setting | tuple[str, type]]:
    """cls's flag fields in order; a nested config as (field name, its class).
    serve_side: leave out per-process fields (those of a config nested in another)."""
    hints = typing.get_type_hints(cls)
    out: list[Setting | tuple[str, type]] = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            out.append((f.name, hints[f.name]))
        elif "flag" in f.metadata and not (serve_side and f.metadata["flag"].per_process):
            out.append(Setting(f, f.metadata["flag"], _strip_none(hints[f.name])))
    return out


def env_names(cls: type) -> set[str]:
    """Every variable a config class reads, nested configs' included."""
    names: set[str] = set()
    for s in settings(cls):
        if isinstance(s, tuple):
            names |= env_names(s[1])
        else:
            names |= {s.env, s.file_env} if s.flag.secret else {s.env}
    return names


def section(cls: type) -> str:
    """The config file section of a config class: ServeConfig -> "serve"."""
    return cls.__name__.removesuffix("Config").lower()


def _from_file(s: Setting, value: Any, where: str) -> Any:
    """A config file's value for s (TOML: typed already; text parses as a variable would)."""
    if isinstance(value, str):
        return _from_env(s, value, where=f"{where} = {value!r} (for {s.option})")
    if s.repeated and isinstance(value, list):
        items = [_from_file(replace_kind(s), v, where) for v in value]
        bad = next((i for i in items if isinstance(i, _BadEnv)), None)
        return bad or tuple(items)
    ok = (
        (s.kind is bool and isinstance(value, bool))
        or (s.kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (s.kind is float and isinstance(value, int | float) and not isinstance(value, bool))
    )
    if not ok:
        kind = getattr(s.kind, "__name__", s.kind)
        return _BadEnv(f"{where} = {value!r} (for {s.option}): expected {kind}")
    if s.kind is bool and s.flag.negate:
        return not value
    return float(value) if s.kind is float else value


def replace_kind(s: Setting) -> Setting:
    """s as one item of a repeated setting."""
    return Setting(s.field, s.flag, typing.get_args(s.kind)[0])


def _from_env(s: Setting, raw: str, *, where: str = "") -> Any:
    """The value of s's variable, or a _BadEnv saying precisely what is wrong with it."""
    where = where or f"{s.env}={raw!r} (for {s.option})"
    if s.kind is bool:
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            return _BadEnv(f"{where}: expected 1/0, true/false, yes/no or on/off")
        on = word in _TRUE
        return not on if s.flag.negate else on
    parse = s.parser()
    try:
        values = [parse(raw.strip())]  # a repeatable flag's variable: one value (a comma list)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        why = f"expected {_WHAT[parse]}" if parse in _WHAT else str(e)
        return _BadEnv(f"{where}: {why}")
    if s.flag.choices and any(v not in s.flag.choices for v in values):
        return _BadEnv(f"{where}: expected one of {', '.join(s.flag.choices)}")
    return tuple(values) if s.repeated else values[0]


class _Append(argparse.Action):
    """Repeatable flag whose first use replaces the default (a variable's value) instead of adding to it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, [*items, values])


class _Given(argparse.Action):
    """Stores the value and marks it as given on the command line (for the secret check)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, _given(self.dest), True)


def _given(dest: str) -> str:
    return f"_given__{dest}"


def _file_dest(name: str) -> str:
    return f"{name}__file"


def _help(s: Setting, source: str, default: Any) -> str:
    """The flag's help, saying where its value comes from when not given: the variable or file
    that set it (never its value: it may be a secret), or the default."""
    text = s.flag.help or ""
    if source:
        return f"{text} (now set by {source})".strip()
    if s.flag.both:
        return f"{text} (default: {'on' if default else 'off'})".strip()
    if default in (None, "", False, []) or "default" in text:
        return text
    return f"{text} (default: %(default)s)".strip()


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    env: Mapping[str, str] | None = None,
    *,
    serve_side: bool = False,
    group_title: str | None = None,
    file: Mapping[str, Mapping[str, Any]] | None = None,
    file_name: str = "",
) -> None:
    """One argparse argument per flag field of cls (dest: the field's name); variables, then the
    config file's values (`file`: section -> key -> value, read from `file_name`) as defaults."""
    env = os.environ if env is None else env
    values = (file or {}).get(section(cls), {})
    for s in settings(cls, serve_side=serve_side):
        if isinstance(s, tuple):
            assert isinstance(parser, argparse.ArgumentParser), "configs nest one level deep"
            sub = parser.add_argument_group(group_title or s[0])
            add_flags(sub, s[1], env, serve_side=True, file=file, file_name=file_name)
            continue
        raw = env.get(s.env, "")
        where = f"{file_name} [{section(cls)}] {s.name}"
        if raw:
            default, source = _from_env(s, raw), s.env
        elif s.name in values:
            default, source = _from_file(s, values[s.name], where), where
        else:
            default, source = s.default(), ""
        kwargs: dict[str, Any] = {"dest": s.name, "default": default, "help": _help(s, source, default)}
        if s.kind is bool:
            kwargs["action"] = (
                argparse.BooleanOptionalAction
                if s.flag.both
                else "store_false"
                if s.flag.negate
                else "store_true"
            )
        else:
            kwargs.update(type=s.parser(), choices=s.flag.choices, metavar=s.flag.metavar)
            kwargs["required"] = s.flag.required and not source
            if s.repeated:
                kwargs["action"] = _Append
            elif s.flag.secret is not None:
                kwargs["action"] = _Given
        parser.add_argument(s.option, **kwargs)
        if s.flag.secret is not None:
            from_env = env.get(s.file_env, "")
            parser.add_argument(
                s.file_option,
                dest=_file_dest(s.name),
                default=from_env or None,
                action=_Given,
                metavar="FILE",
                help=f"read {s.option} from FILE (its first line): how to give a secret"
                + (f" (now set by {s.file_env})" if from_env else ""),
            )


def from_args(cls: type[C], ns: argparse.Namespace, *, serve_side: bool = False) -> C:
    """The config from parsed flags (fields without a flag keep their defaults); validated
    by the config itself. Raises ConfigError, e.g. for a variable that did not parse."""
    values: dict[str, Any] = {}
    for s in settings(cls, serve_side=serve_side):
        if isinstance(s, tuple):
            values[s[0]] = from_args(s[1], ns, serve_side=True)
            continue
        v = getattr(ns, s.name)
        if isinstance(v, _BadEnv):
            raise ConfigError(v.message)
        if s.flag.secret is not None:
            v = _secret(s, ns, v)
        values[s.name] = tuple(v) if s.repeated else v
    return cls(**values)


def _secret(s: Setting, ns: argparse.Namespace, value: Any) -> Any:
    """A secret setting's value: the flag's (refused if it holds a secret), else --NAME-file's
    (or RECGEN_NAME_FILE's) content, else the variable's, the config file's or the default."""
    on_command_line = getattr(ns, _given(s.name), False)
    path = getattr(ns, _file_dest(s.name), None)
    if on_command_line:
        if getattr(ns, _given(_file_dest(s.name)), False):
            raise ConfigError(f"{s.option} and {s.file_option}: give one of them")
        if s.flag.secret is not None and s.flag.secret(value):
            raise ConfigError(
                f"{s.option}: the value holds a secret (a password), and the command line is visible "
                f"to every user of the machine (ps); set {s.env} or put it in a file: {s.file_option} FILE"
            )
        return value
    if not path:
        return value
    try:
        lines = open(path, encoding="utf-8").read().splitlines()  # noqa: SIM115 - read at once
    except OSError as e:
        raise ConfigError(f"{s.file_option} {path}: {e.strerror or e}") from None
    text = lines[0].strip() if lines else ""
    if not text:
        raise ConfigError(f"{s.file_option} {path}: the file is empty")
    return s.parser()(text)


def to_argv(cfg: Any) -> list[str]:
    """The flags that rebuild cfg through its parser, every set value spelled out (so no
    variable of the process that reads them can change it). Nested configs are left out."""
    argv: list[str] = []
    for s in settings(type(cfg)):
        if isinstance(s, tuple):
            continue
        value = getattr(cfg, s.name)
        if s.kind is bool and s.flag.both:
            argv += [s.option if value else "--no-" + s.option[2:]]
        elif s.kind is bool:
            argv += [s.option] if value != s.flag.negate else []
        elif s.repeated:
            for item in value:
                argv += [s.option, s.flag.show(item)]
        elif value is not None and not (s.flag.required and value == ""):
            argv += [s.option, s.flag.show(value)]
    return argv
