"""The settings every `recgen` subcommand takes, before or after its name: logging and tracing.

They are not fields of a config dataclass because they are read before the subcommand is
known (logging is configured first). Each has a RECGEN_* variable and a top-level key in
the config file (outside any section); `recgen serve` hands them to its local workers as
their variables, so the workers log and trace as the gateway does.
"""

from __future__ import annotations

from dataclasses import dataclass

LOG_FORMATS = ("plain", "json")
CONFIG_HELP = "TOML file of settings: [serve], [worker], [export] sections, keys = setting names"


@dataclass(frozen=True)
class Global:
    option: str
    default: str
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")

    @property
    def env(self) -> str:
        return "RECGEN_" + self.dest.upper()


GLOBALS = (
    Global("--log-level", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Global("--log-format", "plain", "plain text, or json: one JSON object per line", LOG_FORMATS),
    Global(
        "--otlp-endpoint",
        "",
        "send OpenTelemetry traces to this OTLP/gRPC collector, e.g. http://127.0.0.1:4317 "
        "(default: tracing off); the gateway's and the workers' spans join the caller's traceparent",
    ),
)
