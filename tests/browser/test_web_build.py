"""The committed bundles ``proxy/web/vendor/hpke.js`` and ``proxy/web/vendor/privacypass.js`` are exactly what the
pinned sources build, every time."""

from __future__ import annotations

import hashlib
import json
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


def test_privacypass_bundle_is_reproducible_and_matches_the_committed_file(tmp_path: Path) -> None:
    """vendor/privacypass.js: Cloudflare's privacypass-ts 0.9.0 with blindrsa-ts overridden to 0.4.4 (the registry
    lacks the 0.4.5 that privacypass-ts pins), built twice into directories and compared with the committed file."""
    r = subprocess.run([str(REPO / "scripts" / "setup-web")], cwd=REPO, check=False, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    outs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        r = subprocess.run(["node", "build.mjs", "--out-dir", str(tmp_path / name)], cwd=WEB_DIR, check=False,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        outs.append((tmp_path / name / "privacypass.js").read_bytes())
        assert (tmp_path / name / "hpke.js").read_bytes() == (WEB_DIR / "vendor" / "hpke.js").read_bytes()
    first, second = outs
    assert first == second, "two builds from the same lockfile differ"
    committed = (WEB_DIR / "vendor" / "privacypass.js").read_bytes()
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(committed).hexdigest(), (
        "proxy/web/vendor/privacypass.js is stale: run `node proxy/web/build.mjs` and commit it")
    assert str(REPO).encode() not in first and b"/root/" not in first and b"/home/" not in first
    head = first[:600]
    assert b"@cloudflare/privacypass-ts@0.9.0" in head and b"@cloudflare/blindrsa-ts@0.4.4" in head
    for name in (b"TokenChallenge", b"Token,", b"TOKEN_TYPES", b"publicVerif"):
        assert name in first[-400:], name
    # The override is pinned in package.json and applied in the lockfile.
    package = json.loads((WEB_DIR / "package.json").read_text())
    lock = json.loads((WEB_DIR / "package-lock.json").read_text())
    assert package["overrides"] == {"@cloudflare/blindrsa-ts": "0.4.4"}
    assert lock["packages"]["node_modules/@cloudflare/blindrsa-ts"]["version"] == "0.4.4"
