"""The gateway's state store: feedback log, impressions, user histories, catalog changes.

One interface (`base.StateStore`, whose docstring is the contract) and two
backends: SQLite, the embedded default (`sqlite.SQLiteStore`), and PostgreSQL
for several gateways on shared state (`postgres.PostgresStore`). `open_store`
picks one from the `--state` value.
"""

from __future__ import annotations

from pathlib import Path

from server.state.base import (
    SCHEMA_VERSION,
    CatalogChange,
    Conflict,
    Event,
    StateStore,
    StoreUnavailable,
    UserState,
    is_postgres_url,
)
from server.state.sqlite import SQLiteStore


def open_store(location: Path | str, synchronous: str = "FULL") -> StateStore:
    """The store at `location`: `postgresql://...` or `postgres://...` → PostgreSQL
    (`is_postgres_url`); anything else is a SQLite file path."""
    if is_postgres_url(location):
        from server.state.postgres import PostgresStore  # psycopg only when asked for

        return PostgresStore(str(location), synchronous=synchronous)
    return SQLiteStore(location, synchronous=synchronous)


__all__ = [
    "SCHEMA_VERSION",
    "CatalogChange",
    "Conflict",
    "Event",
    "SQLiteStore",
    "StateStore",
    "StoreUnavailable",
    "UserState",
    "is_postgres_url",
    "open_store",
]
