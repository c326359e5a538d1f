"""The GPU machine's wheels: downloaded here, split into parts that travel, joined and installed there.

    python -m tools.gpu_check.wheels download [--req requirements-gpu.txt] [--dest .cache/gpu-wheels/whl]
    python -m tools.gpu_check.wheels split    [--src .cache/gpu-wheels/whl] [--carry .cache/gpu-wheels/carry]
    python -m tools.gpu_check.wheels plan     [--carry ...]          # the device calls, one per folder
    python -m tools.gpu_check.wheels stash    --from CARRY/call-NN --stash DIR   # on the device, each call
    python -m tools.gpu_check.wheels install  --stash DIR --target SITE          # join, verify, pip --target

The GPU machine has no network, and one call to it carries at most 64 MiB of
git-ignored files, while onnxruntime-gpu alone is a 244 MiB wheel. So `split` cuts
every wheel into parts of at most `--part-mib` (60) and packs the parts into
folders `call-01`, `call-02`, ... of at most `--call-mib` (60) each, every folder
with the same manifest.json (sha256 and size of each wheel and each part). Each
device call carries one folder and `stash`es its parts outside the checkout
(verified against the manifest); the last call `install`s: join, verify every
wheel's sha256, then `pip install --no-deps --no-index --target SITE` (or, without
pip, unzip). `--no-deps`: the set is pinned and complete on top of what the
machine has (docs/gpu.md); nothing is resolved there.

Which wheels: requirements-gpu.txt (the serving set with onnxruntime-gpu in place
of onnxruntime) minus what the GPU machine's image already has (DEVICE_HAS).
Standard library only: this runs before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "gpu-wheels"
MANIFEST = "manifest.json"
MIB = 1024 * 1024
# The GPU machine's image has these (docs/gpu.md): numpy 2.5 (ours is 2.4.6; both fit every
# wheel here); tokenizers, which its transformers 5.x requires at a version it checks on import
# (ours, earlier on the path, could fail that check; the worker uses only its stable API); and
# psycopg serves only --state postgresql://, which the check does not use.
DEVICE_HAS = ("numpy", "tokenizers", "psycopg")
# What the wheels are for: CPython 3.12 on x86-64 Linux (the GPU machine's interpreter).
PY = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def requirements(req: Path, skip: tuple[str, ...] = DEVICE_HAS) -> list[str]:
    """The pinned lines of `req`, minus the distributions in `skip` (extras ignored for the match)."""
    out = []
    for line in req.read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        if not spec:
            continue
        name = re.split(r"[\[=<>!~; ]", spec, maxsplit=1)[0].lower().replace("_", "-")
        if name not in skip:
            out.append(spec)
    return out


def download(req: Path, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    cmd += ["--python-version", PY, "--implementation", "cp"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    cmd += requirements(req)
    subprocess.run(cmd, check=True)
    return sorted(dest.glob("*.whl"))


def split(src: Path, carry: Path, part_mib: float = 60, call_mib: float = 60) -> dict[str, Any]:
    """Parts of every wheel in `src`, packed into carry/call-NN folders; returns the manifest."""
    part_size, call_size = int(part_mib * MIB), int(call_mib * MIB)
    assert part_size <= call_size, "a part must fit in one call"
    shutil.rmtree(carry, ignore_errors=True)
    staging = carry / ".parts"
    staging.mkdir(parents=True)
    files: list[dict[str, Any]] = []
    for whl in sorted(src.glob("*.whl")):
        parts: list[dict[str, Any]] = []
        with whl.open("rb") as f:
            for i, block in enumerate(iter(lambda: f.read(part_size), b"")):
                name = f"{whl.name}.part{i:02d}"
                (staging / name).write_bytes(block)
                parts.append({"name": name, "size": len(block), "sha256": hashlib.sha256(block).hexdigest()})
        files.append({"name": whl.name, "size": whl.stat().st_size, "sha256": sha256(whl), "parts": parts})
    # First fit, largest parts first: few calls, each under call_size.
    bins: list[list[dict[str, Any]]] = []
    loads: list[int] = []
    for part in sorted((p for f in files for p in f["parts"]), key=lambda p: -p["size"]):
        fit = next((i for i, used in enumerate(loads) if used + part["size"] <= call_size), None)
        if fit is None:
            bins.append([])
            loads.append(0)
            fit = len(bins) - 1
        bins[fit].append(part)
        loads[fit] += part["size"]
        part["call"] = fit + 1
    manifest = {"format": 1, "part_mib": part_mib, "call_mib": call_mib, "calls": len(bins), "files": files}
    for n, packed in enumerate(bins, start=1):
        folder = carry / f"call-{n:02d}"
        folder.mkdir()
        for part in packed:
            (staging / part["name"]).rename(folder / part["name"])
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    staging.rmdir()
    return manifest


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise SystemExit(f"{path} missing: run `make gpu-wheels` (it writes one per call folder)")
    return json.loads(path.read_text())


def stash(src: Path, stash_dir: Path) -> dict[str, Any]:
    """Copy src's parts into stash_dir/parts (each verified); returns what the stash holds now."""
    m = _manifest(src)
    parts = {p["name"]: p for f in m["files"] for p in f["parts"]}
    (stash_dir / "parts").mkdir(parents=True, exist_ok=True)
    for path in sorted(src.glob("*.part[0-9][0-9]")):
        want = parts.get(path.name)
        if want is None:
            raise SystemExit(f"{path.name} is not in {src / MANIFEST}")
        if path.stat().st_size != want["size"] or sha256(path) != want["sha256"]:
            raise SystemExit(f"{path}: size or sha256 differs from the manifest (damaged in transit)")
        shutil.copyfile(path, stash_dir / "parts" / path.name)
    shutil.copyfile(src / MANIFEST, stash_dir / MANIFEST)
    have = {p.name for p in (stash_dir / "parts").iterdir()}
    missing_calls = sorted({p["call"] for p in parts.values() if p["name"] not in have})
    return {"stash": str(stash_dir), "parts": len(have), "of": len(parts), "calls_missing": missing_calls}


def join(stash_dir: Path, out: Path) -> list[Path]:
    """Every wheel rebuilt from its parts into `out`, sha256-checked; SystemExit names what is missing."""
    m = _manifest(stash_dir)
    have = stash_dir / "parts"
    missing = [p["name"] for f in m["files"] for p in f["parts"] if not (have / p["name"]).is_file()]
    if missing:
        calls = sorted({p["call"] for f in m["files"] for p in f["parts"] if p["name"] in missing})
        raise SystemExit(f"{len(missing)} part(s) missing from {have} (carry calls {calls}): {missing[:4]}")
    out.mkdir(parents=True, exist_ok=True)
    wheels = []
    for f in m["files"]:
        target = out / f["name"]
        with target.open("wb") as w:
            for p in f["parts"]:
                with (have / p["name"]).open("rb") as r:
                    shutil.copyfileobj(r, w)
        if sha256(target) != f["sha256"]:
            raise SystemExit(f"{target}: sha256 of the joined wheel differs from the manifest")
        wheels.append(target)
    return wheels


def _unzip(wheel: Path, target: Path) -> None:
    """A wheel's files into target (what pip --target does for these wheels, without pip)."""
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    for data in target.glob("*.data"):
        for kind in ("purelib", "platlib"):
            for p in (data / kind).glob("*") if (data / kind).is_dir() else []:
                shutil.move(str(p), target / p.name)
        shutil.rmtree(data)


def install(stash_dir: Path, target: Path, cross: bool = False) -> dict[str, Any]:
    """Join, verify and install every wheel of the stash into `target` (not the environment)."""
    wheels = join(stash_dir, stash_dir / "wheels")
    target.mkdir(parents=True, exist_ok=True)
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    if has_pip:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--upgrade"]
        cmd += ["--target", str(target), *map(str, wheels)]
        if cross:  # a rehearsal on another interpreter: install the 3.12 files as they are
            cmd += ["--python-version", PY, "--implementation", "cp", "--only-binary=:all:"]
            cmd += [x for p in PLATFORMS for x in ("--platform", p)]
        subprocess.run(cmd, check=True)
    else:
        for w in wheels:
            _unzip(w, target)
    return {
        "target": str(target),
        "wheels": [w.name for w in wheels],
        "installer": "pip" if has_pip else "unzip",
    }


def plan(carry: Path) -> list[list[str]]:
    calls = sorted(carry.glob("call-[0-9][0-9]"))
    return [sorted(p.name for p in c.iterdir()) for c in calls]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.gpu_check.wheels", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="pip download the device's wheels (cp312, manylinux)")
    d.add_argument("--req", type=Path, default=ROOT / "requirements-gpu.txt")
    d.add_argument("--dest", type=Path, default=CACHE / "whl")
    s = sub.add_parser("split", help="parts and call folders with a manifest")
    s.add_argument("--src", type=Path, default=CACHE / "whl")
    s.add_argument("--carry", type=Path, default=CACHE / "carry")
    s.add_argument("--part-mib", type=float, default=60)
    s.add_argument("--call-mib", type=float, default=60)
    pl = sub.add_parser("plan", help="list the call folders and what each carries")
    pl.add_argument("--carry", type=Path, default=CACHE / "carry")
    st = sub.add_parser("stash", help="verify one call folder's parts and copy them to the stash")
    st.add_argument("--from", dest="src", type=Path, required=True)
    st.add_argument("--stash", type=Path, required=True)
    i = sub.add_parser("install", help="join + verify + pip install --target")
    i.add_argument("--stash", type=Path, required=True)
    i.add_argument("--target", type=Path, required=True)
    i.add_argument(
        "--cross", action="store_true", help="install the cp312 files from another Python (rehearsal)"
    )
    a = p.parse_args(argv)
    if a.cmd == "download":
        print("\n".join(w.name for w in download(a.req, a.dest)))
    elif a.cmd == "split":
        m = split(a.src, a.carry, a.part_mib, a.call_mib)
        n_parts = sum(len(f["parts"]) for f in m["files"])
        print(f"{len(m['files'])} wheels, {n_parts} parts, {m['calls']} call folders under {a.carry}")
    elif a.cmd == "plan":
        for n, names in enumerate(plan(a.carry), start=1):
            size = sum((a.carry / f"call-{n:02d}" / x).stat().st_size for x in names) / MIB
            print(f"call-{n:02d} ({size:.1f} MiB): {', '.join(x for x in names if x != MANIFEST)}")
    elif a.cmd == "stash":
        print(json.dumps(stash(a.src, a.stash)))
    elif a.cmd == "install":
        print(json.dumps(install(a.stash, a.target, a.cross)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
