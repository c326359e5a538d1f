"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp dir, unix socket only.

PostgreSQL refuses to run as root, so as root the server runs as the
`postgres` system user (Debian's package creates it) or `nobody`. It listens on
no TCP port, only on a socket inside its own directory: nothing to collide with
other test runs on the machine. Tests get a fresh database each from
`new_database()`.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

PORT = 5432  # only names the socket file (.s.PGSQL.5432) in our own directory


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: Debian's versioned dirs first, then PATH."""
    for d in sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True
    ):
        if os.access(f"{d}/initdb", os.X_OK) and os.access(f"{d}/pg_ctl", os.X_OK):
            return Path(d)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def _run_as() -> str | None:
    """The user the server runs as when we are root (None: run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.user = _run_as()
        # Not under pytest's tmp dirs: those are 0700 root, which the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="recgen-pg-"))
        self.data = self.root / "data"
        self._names = itertools.count()
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    def _cmd(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(
            [*prefix, str(self.bindir / tool), *args], capture_output=True, text=True, check=True, timeout=120
        )

    def init(self) -> PostgresServer:
        # --no-sync: a throwaway cluster need not fsync its initial files.
        self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> PostgresServer:
        # fsync=off: the cluster is thrown away, and on a shared disk every checkpoint
        # (each stop) would flush every test database. Commits still wait for the WAL
        # write; what the store asks for (synchronous_commit=on) is checked by the tests.
        opts = f"-c listen_addresses='' -k {self.root} -p {PORT} -c fsync=off"
        self._cmd(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w", "start"
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """fast: close connections and shut down cleanly; immediate: as if it crashed."""
        self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.root}&port={PORT}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cleanup(self) -> None:
        try:
            self.stop("immediate")  # its data is deleted next: no shutdown checkpoint
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
