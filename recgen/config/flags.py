"""Flags and RECGEN_* variables generated from the config dataclasses, and back.

A setting is a dataclass field made with `setting(default, help=...)`: the
field's default is the only default, and its metadata carries the flag's help.
`add_flags` turns a config class into argparse arguments, `from_args` turns the
parsed flags into a validated config, `to_argv` writes a config back as the
flags that rebuild it (how `recgen serve` starts its local workers).

Environment: RECGEN_<FLAG> (`--max-seqs` → RECGEN_MAX_SEQS, `--no-llm` →
RECGEN_NO_LLM=1) gives a flag's value when the flag is absent, so precedence is
flag, then variable, then the field's default. The variables become argparse
defaults when a parser is built; an unreadable one is reported, naming the
variable, only by the command that uses it. Booleans take 1/0, true/false,
yes/no, on/off; an empty variable counts as unset. This module reads the
environment only when asked to build a parser, and knows no command's settings.
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
        names |= env_names(s[1]) if isinstance(s, tuple) else {s.env}
    return names


def _from_env(s: Setting, raw: str) -> Any:
    """The value of s's variable, or a _BadEnv saying precisely what is wrong with it."""
    where = f"{s.env}={raw!r} (for {s.option})"
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


def _help(s: Setting, raw: str, default: Any) -> str:
    """The flag's help, saying where its value comes from when not given: the variable that set
    it (never its value: it may be a secret), or the default."""
    text = s.flag.help or ""
    if raw:
        return f"{text} (now set by {s.env})".strip()
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
) -> None:
    """One argparse argument per flag field of cls (dest: the field's name); variables as defaults."""
    env = os.environ if env is None else env
    for s in settings(cls, serve_side=serve_side):
        if isinstance(s, tuple):
            assert isinstance(parser, argparse.ArgumentParser), "configs nest one level deep"
            sub = parser.add_argument_group(group_title or s[0])
            add_flags(sub, s[1], env, serve_side=True)
            continue
        raw = env.get(s.env, "")
        default = _from_env(s, raw) if raw else s.default()
        kwargs: dict[str, Any] = {"dest": s.name, "default": default, "help": _help(s, raw, default)}
        if s.kind is bool:
            kwargs["action"] = "store_false" if s.flag.negate else "store_true"
        else:
            kwargs.update(type=s.parser(), choices=s.flag.choices, metavar=s.flag.metavar)
            kwargs["required"] = s.flag.required and not raw
            if s.repeated:
                kwargs["action"] = _Append
        parser.add_argument(s.option, **kwargs)


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
        values[s.name] = tuple(v) if s.repeated else v
    return cls(**values)


def to_argv(cfg: Any) -> list[str]:
    """The flags that rebuild cfg through its parser, every set value spelled out (so no
    variable of the process that reads them can change it). Nested configs are left out."""
    argv: list[str] = []
    for s in settings(type(cfg)):
        if isinstance(s, tuple):
            continue
        value = getattr(cfg, s.name)
        if s.kind is bool:
            argv += [s.option] if value != s.flag.negate else []
        elif s.repeated:
            for item in value:
                argv += [s.option, s.flag.show(item)]
        elif value is not None and not (s.flag.required and value == ""):
            argv += [s.option, s.flag.show(value)]
    return argv
