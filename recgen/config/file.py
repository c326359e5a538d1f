"""The optional config file (`--config FILE` or RECGEN_CONFIG): TOML, one section per command.

    log_format = "json"          # the global settings (log_level, log_format, otlp_endpoint)
    [serve]                      # recgen serve (its local workers' settings: [worker])
    port = 50051
    workers = 4
    [worker]                     # recgen worker, and serve's local workers
    max_seqs = 16
    [export]
    factors = 64

Keys are the settings' field names (the settings table: `python -m recgen.config.table`).
A value here is used when neither the flag nor its RECGEN_* variable is given. An unknown
section or key is an error naming it (a typo must not pass silently). Secrets may live
here (a file is not visible in `ps`); keep it readable by the service's user only.

What it does not do: parse values (recgen/config/flags.py does, as for variables).
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from recgen.config.flags import ConfigError, section, settings

ENV = "RECGEN_CONFIG"


def find_config(argv: Iterable[str], env: Mapping[str, str]) -> str:
    """The config file path: `--config FILE` / `--config=FILE` anywhere in argv, else RECGEN_CONFIG."""
    args = list(argv)
    for i, a in enumerate(args):
        if a == "--":
            break
        if a == "--config" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return env.get(ENV, "")


def _keys(cls: type) -> set[str]:
    return {s.name for s in settings(cls) if not isinstance(s, tuple)}


def load_config(
    path: str, classes: Iterable[type], top_level: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """section -> key -> value from the TOML file at `path`, every section and key checked
    against the config classes that may read it; `top_level`: keys allowed outside any section
    (the global settings: log_level, ...), returned under the section ""."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML: {e}") from None
    known = {section(cls): _keys(cls) for cls in classes}
    top = {k: data.pop(k) for k in list(data) if not isinstance(data[k], dict)}
    for key in top:
        if key not in top_level:
            raise ConfigError(f"{path}: {key}: no such setting outside a section")
    for name, values in data.items():
        if name not in known:
            expected = ", ".join(sorted(known))
            raise ConfigError(f"{path}: unknown section [{name}] (expected one of {expected})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{name}] must be a table of settings")
        for key in values:
            if key not in known[name]:
                near = difflib.get_close_matches(key, known[name], n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                raise ConfigError(f"{path}: [{name}] {key}: no such setting{hint}")
    return {"": top, **data}
