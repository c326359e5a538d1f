"""User ids in logs: pseudonyms by default, raw only when configured.

A pseudonym is a keyed hash (HMAC-SHA256, 12 hex digits): the same user gets
the same pseudonym in every log line of a run, so a request can be followed,
but the id cannot be recovered from logs. The key is random per process
unless `--log-salt` fixes it (to follow a user across restarts).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


class UserIdPolicy:
    def __init__(self, raw: bool = False, salt: str | None = None) -> None:
        self.raw = raw
        self._key = salt.encode() if salt else secrets.token_bytes(32)

    def __call__(self, user_id: str) -> str:
        if self.raw:
            return user_id
        return "u:" + hmac.new(self._key, user_id.encode(), hashlib.sha256).hexdigest()[:12]
