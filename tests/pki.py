"""A throwaway PKI for tests, made with the openssl CLI: a CA and certificates it signs."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str = "ca") -> None:
    """d/NAME.pem and d/NAME.key: a self-signed CA valid for two days."""
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", "2", "-subj", f"/CN=recgen-test-{name}", cwd=d,
    )  # fmt: skip


def issue(d: Path, name: str, ext: str, ca: str = "ca") -> None:
    """d/NAME.pem and d/NAME.key signed by d/CA; ext: one openssl extension line, e.g.
    'subjectAltName=DNS:localhost,IP:127.0.0.1' or 'extendedKeyUsage=clientAuth'."""
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={name}", cwd=d,
    )  # fmt: skip
    (d / f"{name}.ext").write_text(ext + "\n")
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d,
    )  # fmt: skip
