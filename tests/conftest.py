"""Shared fixtures: the downloaded wheels and a small exported model version."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """Tests that run `recgen.cli.main` in process install a StreamHandler on the sys.stderr
    of that moment: pytest's capture file, closed when the test ends. Left on the root logger,
    it makes every later log line of the session a "--- Logging error ---" report."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def wheels_dir() -> Path:
    d = ROOT / ".cache" / "wheels"
    if not (d / "recbole-1.2.1-py3-none-any.whl").is_file():
        pytest.fail("MovieLens wheel missing: run `make data` (make test does it)")
    return d


TINY_LLM_ANSWER = "Here are a few picks for you tonight. Enjoy them with friends and popcorn."


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory, wheels_dir: Path) -> Path:
    """A small but real model version: MovieLens-100K, 16 factors, a tiny Llama
    trained in the test to write one grounded sentence (it names no title)."""
    from export.data import load_movielens100k
    from export.pipeline import export_version
    from recgen.config.export import ExportConfig
    from tests.llm_fixtures import train_tiny_llm

    root = tmp_path_factory.mktemp("models")
    ckpt = train_tiny_llm(tmp_path_factory.mktemp("ckpt"), TINY_LLM_ANSWER)
    opts = ExportConfig(
        llm=str(ckpt),
        with_encoder=False,
        quantize="none",
        factors=16,
        reg=0.1,
        alpha=2.0,
        iterations=6,
        progress=False,
        evaluate_ease=False,
        wheels_dir=wheels_dir,
    )
    export_version(load_movielens100k(wheels_dir), root, opts)
    return root


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL server (tests/pg.py) for the whole session; skipped
    where the PostgreSQL binaries are not installed."""
    from tests.pg import PostgresServer, find_bindir

    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    server = PostgresServer(bindir)
    try:
        yield server.init().start()
    finally:
        server.cleanup()
