"""Log lines: JSON (one object per record) or plain text, each carrying its call's request id.

`request_id` is a context variable: the gateway's interceptor (server/errors.py) sets it
for the duration of a call, and every record logged inside that call (its task and the
tasks it starts) carries it: `RequestIdFilter`, installed on the handler by recgen/cli.py,
copies it onto each record as `record.request_id` (JSON: a "request_id" key; plain: a
" [rid=...]" after the logger name). Records logged outside any call carry none.

`redact` hides secrets (passwords in URLs, bearer tokens) in a line's text; the CLI's
handler applies it to every record (`RedactingFilter`), so a database URL logged by a
library does not leak its password.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("recgen_request_id", default="")

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s%(rid)s: %(message)s"

# scheme://user:PASSWORD@host → scheme://user:***@host; "Bearer TOKEN" → "Bearer ***";
# password=... in a libpq keyword string.
_SECRETS = (
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]+(@)"), r"\1***\2"),
    (re.compile(r"(\b[Bb]earer\s+)[^\s'\",]+"), r"\1***"),
    (re.compile(r"(\bpassword\s*=\s*)[^\s'\",&]+", re.IGNORECASE), r"\1***"),
)


def redact(text: str) -> str:
    """`text` with URL passwords, bearer tokens and password=... values replaced by ***."""
    if "://" not in text and "earer" not in text and "assword" not in text.lower():
        return text  # the common case: one scan, no regex
    for pattern, repl in _SECRETS:
        text = pattern.sub(repl, text)
    return text


class RequestIdFilter(logging.Filter):
    """Puts the current call's request id on each record (`request_id`, and `rid` for the plain
    format: " [rid=ID]" or "")."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        record.request_id = rid
        record.rid = f" [rid={rid}]" if rid else ""
        return True


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with `redact` (args merged first, so a secret passed as an
    argument is caught too). Exceptions' text is redacted by the formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        # The merged text replaces msg and args, so the formatter does not merge them again.
        record.msg, record.args = redact(record.getMessage()), None
        return True


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def formatException(self, ei) -> str:  # type: ignore[no-untyped-def]
        return redact(super().formatException(ei))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", "")
        if rid:
            out["request_id"] = rid
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)
