"""The model-repository format: complete-or-invisible versions, checked on load."""

import json
from pathlib import Path

import pytest

from recgen.repository import Manifest, ModelRepository, RepositoryError, VersionWriter


def manifest() -> Manifest:
    return Manifest(version="", created_at="now", dataset={}, dims={"factors": 4}, metrics={}, params={})


def test_version_visible_only_after_commit(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path)
    with VersionWriter(tmp_path, "v1") as w:
        (w.path / "a.bin").write_bytes(b"abc")
        assert repo.versions() == []  # being built: not a version yet
        w.commit(manifest())
    assert repo.versions() == ["v1"]
    mv = repo.open()
    assert mv.name == "v1" and "a.bin" in mv.manifest.files


def test_crash_mid_export_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), VersionWriter(tmp_path, "v1") as w:
        (w.path / "a.bin").write_bytes(b"abc")
        raise RuntimeError("export died")
    assert ModelRepository(tmp_path).versions() == []
    assert list(tmp_path.iterdir()) == []


def test_checksum_and_format_checked(tmp_path: Path) -> None:
    with VersionWriter(tmp_path, "v1") as w:
        (w.path / "a.bin").write_bytes(b"abc")
        w.commit(manifest())
    (tmp_path / "v1" / "a.bin").write_bytes(b"abd")
    with pytest.raises(RepositoryError, match="checksum mismatch for a.bin"):
        ModelRepository(tmp_path).open("v1")
    raw = json.loads((tmp_path / "v1" / "manifest.json").read_text())
    raw["format_version"] = 99
    (tmp_path / "v1" / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(RepositoryError, match="format version 99"):
        ModelRepository(tmp_path).open("v1", verify=False)


def test_latest_is_newest(tmp_path: Path) -> None:
    for v in ("20260101T000000Z-000001", "20260102T000000Z-000001"):
        with VersionWriter(tmp_path, v) as w:
            w.commit(manifest())
    assert ModelRepository(tmp_path).latest() == "20260102T000000Z-000001"
