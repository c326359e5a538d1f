"""The model-repository format: export writes it, the worker reads it.

A repository is a directory of immutable versions::

    <root>/<version>/manifest.json     written last (atomic rename)
    <root>/<version>/catalog.jsonl     one item per line, in factor-row order
    <root>/<version>/item_factors.npy  float32 (n_items, d)
    <root>/<version>/item_popularity.npy float32 (n_items,) training counts
    <root>/<version>/scorer.onnx       (user_vectors, item_vectors, context) -> scores
    <root>/<version>/items.faiss       inner-product index over item_factors
    <root>/<version>/llm/              model.onnx, tokenizer.json, llm.json
    <root>/<version>/encoder/          model.onnx, tokenizer.json, encoder.json, content_map.npy

    <root>/SERVING                     {"version": ..., "previous": [...]}: what workers serve

A version is complete exactly when its manifest exists; export builds a
version under a hidden temporary name and renames it into place after the
manifest is written, so a crash never leaves a version that looks complete.
This module never imports torch, onnxruntime or faiss: it only knows files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SERVING = "SERVING"  # pointer file: recgen.promotion moves it, workers follow it
_PARTIAL_PREFIX = ".partial-"


class RepositoryError(Exception):
    """A model repository or version is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class CatalogItem:
    item_id: str
    title: str
    text: str = ""
    categories: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "text": self.text,
            "categories": list(self.categories),
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> CatalogItem:
        return CatalogItem(
            item_id=str(d["item_id"]),
            title=str(d["title"]),
            text=str(d.get("text", "")),
            categories=tuple(d.get("categories", ())),
        )


@dataclass
class Manifest:
    version: str
    created_at: str
    dataset: dict[str, Any]  # fingerprint, source, n_users, n_items, n_interactions
    dims: dict[str, int]  # factors, context, encoder
    metrics: dict[str, Any]  # held-out quality, index recall, llm quality
    params: dict[str, Any]  # mf hyper-parameters, index choice, llm source
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "created_at": self.created_at,
            "dataset": self.dataset,
            "dims": self.dims,
            "metrics": self.metrics,
            "params": self.params,
            "files": self.files,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> Manifest:
        return Manifest(
            format_version=int(d["format_version"]),
            version=str(d["version"]),
            created_at=str(d["created_at"]),
            dataset=dict(d["dataset"]),
            dims=dict(d["dims"]),
            metrics=dict(d["metrics"]),
            params=dict(d["params"]),
            files=dict(d["files"]),
        )


def new_version_name(now: datetime | None = None) -> str:
    """Sortable UTC timestamp, e.g. 20261127T203914Z-123456."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ-%f")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class VersionWriter:
    """Builds one version under a temporary name; `commit()` makes it visible.

    Usage::

        with VersionWriter(root) as w:
            np.save(w.path / "item_factors.npy", ...)
            w.commit(manifest_without_files)
    """

    def __init__(self, root: Path, version: str | None = None) -> None:
        self.root = Path(root)
        self.version = version or new_version_name()
        self.path = self.root / f"{_PARTIAL_PREFIX}{self.version}"
        self.final_path = self.root / self.version
        self._committed = False

    def __enter__(self) -> VersionWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.final_path.exists():
            raise RepositoryError(f"version {self.version} already exists in {self.root}")
        self.path.mkdir()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, manifest: Manifest) -> Path:
        """Checksum every file, write the manifest last, rename into place."""
        manifest.version = self.version
        manifest.files = {
            str(p.relative_to(self.path)): sha256_file(p)
            for p in sorted(self.path.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        }
        tmp = self.path / (MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest.to_json(), f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / MANIFEST)
        _fsync_dir(self.path)
        os.replace(self.path, self.final_path)
        _fsync_dir(self.root)
        self._committed = True
        LOG.info("committed model version %s", self.final_path)
        return self.final_path


class ModelRepository:
    """Read side: list complete versions, open one and verify it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def versions(self) -> list[str]:
        """Complete versions, oldest first (names sort by creation time)."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
        )

    def serving(self) -> str:
        """The version to serve: the SERVING pointer's, else the newest complete one.

        A pointer naming a version that is gone (deleted by hand) falls back to
        the newest, with a warning, rather than taking the service down."""
        ptr = self.root / SERVING
        if ptr.is_file():
            try:
                name = str(json.loads(ptr.read_text())["version"])
            except (ValueError, KeyError, TypeError) as e:
                raise RepositoryError(f"{ptr} is unreadable: {e}") from e
            if (self.root / name / MANIFEST).is_file():
                return name
            LOG.warning("SERVING names %s, which is not a complete version: serving the newest", name)
        return self.latest()

    def latest(self) -> str:
        versions = self.versions()
        if not versions:
            raise RepositoryError(f"no complete model version under {self.root}")
        return versions[-1]

    def open(self, version: str | None = None, verify: bool = True) -> ModelVersion:
        version = version or self.serving()
        path = self.root / version
        if not (path / MANIFEST).is_file():
            raise RepositoryError(f"model version {version} is missing or incomplete in {self.root}")
        return ModelVersion.load(path, verify=verify)


@dataclass
class ModelVersion:
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.manifest.version

    @staticmethod
    def load(path: Path, verify: bool = True) -> ModelVersion:
        try:
            raw = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise RepositoryError(f"cannot read {path / MANIFEST}: {e}") from e
        if raw.get("format_version") != FORMAT_VERSION:
            raise RepositoryError(
                f"{path}: format version {raw.get('format_version')!r}, this recgen reads {FORMAT_VERSION}"
            )
        manifest = Manifest.from_json(raw)
        mv = ModelVersion(path=path, manifest=manifest)
        if verify:
            mv.verify()
        return mv

    def verify(self) -> None:
        """Every file listed in the manifest exists with its checksum."""
        for rel, digest in self.manifest.files.items():
            p = self.path / rel
            if not p.is_file():
                raise RepositoryError(f"{self.path}: missing file {rel}")
            if sha256_file(p) != digest:
                raise RepositoryError(f"{self.path}: checksum mismatch for {rel}")

    def file(self, rel: str) -> Path:
        return self.path / rel

    def catalog(self) -> list[CatalogItem]:
        with open(self.path / "catalog.jsonl") as f:
            return [CatalogItem.from_json(json.loads(line)) for line in f if line.strip()]


def item_text(it: CatalogItem) -> str:
    """What the content encoder reads for an item, at export and for live upserts alike."""
    parts = [it.title + "."]
    if it.categories:
        parts.append("Genres: " + ", ".join(it.categories) + ".")
    if it.text:
        parts.append(it.text)
    return " ".join(parts)


def write_catalog(path: Path, items: list[CatalogItem]) -> None:
    with open(path, "w") as f:
        for it in items:
            f.write(json.dumps(it.to_json(), ensure_ascii=False) + "\n")
