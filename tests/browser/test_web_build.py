"""The committed bundle ``proxy/web/vendor/hpke.js`` is exactly what the pinned sources build, every time."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from .conftest import REPO, WEB_DIR


def _build(out: Path) -> bytes:
    r = subprocess.run(["node", "build.mjs", "--out", str(out)], cwd=WEB_DIR, check=False, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return out.read_bytes()


def test_bundle_is_reproducible_and_matches_the_committed_file(tmp_path: Path) -> None:
    # scripts/setup-web is idempotent: it installs the npm packages pinned by package-lock.json when needed.
    r = subprocess.run([str(REPO / "scripts" / "setup-web")], cwd=REPO, check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    first = _build(tmp_path / "a.js")
    second = _build(tmp_path / "b.js")
    assert first == second, "two builds from the same lockfile differ"
    committed = (WEB_DIR / "vendor" / "hpke.js").read_bytes()
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(committed).hexdigest(), (
        "proxy/web/vendor/hpke.js is stale: run `node proxy/web/build.mjs` and commit it")
    # Nothing machine-specific leaks into the bundle.
    assert str(REPO).encode() not in first and b"/root/" not in first and b"/home/" not in first
    assert b"esbuild@0.28.2" in first[:400] and b"@hpke/core@1.9.0" in first[:400]
    assert b"@hpke/hybridkem-x-wing@0.7.0" in first[:400] and b"mlkem@" in first[:400]
    # It exports what the page imports, X-Wing (KEM 0x647A) included.
    for name in (b"CipherSuite", b"DhkemX25519HkdfSha256", b"Chacha20Poly1305", b"Aes128Gcm", b"HkdfSha256", b"XWing"):
        assert name in first[-600:], name
