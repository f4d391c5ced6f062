"""JSON nested deeper than Python's parser goes (``'[' * 100000``) in a gateway's ``veil_log`` attachment or in a log
entry is refused like any malformed input, never a ``RecursionError`` traceback: through ``veil attest verify`` (a
real process) and in the parsers the gateway's follower and the clients share."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import tlog
from enclave.attestation import Bundle
from tests.helpers import REPO
from tlog.errors import StatementError
from transparency import CERT_KEY, AttachmentError, LogProofs
from transparency.follow import _release_window
from transparency.statements import KEY_TAG, RELEASE_TAG, parse_key_entry

from .test_log_proofs import _gateway

DEEP = "[" * 100000


def test_veil_attest_verify_refuses_a_deeply_nested_attachment_without_a_traceback(tmp_path: Path) -> None:
    bundle, _ = _gateway()
    b = Bundle.from_json(bundle)
    path = tmp_path / "deep.json"
    path.write_bytes(dataclasses.replace(b, certs={**b.certs, CERT_KEY: DEEP}).to_json())
    publisher = tlog.generate_signer("releases.veil.example").verifier.vkey()
    log_key = tlog.generate_signer("log.veil.example/test").verifier.vkey()
    r = subprocess.run([sys.executable, str(REPO / "veil_cli.py"), "attest", "verify", str(path), "--publisher",
                        publisher, "--log-key", log_key, "--insecure-allow-simulated"],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "refused by the transparency log" in r.stderr
    assert "nested too deeply" in r.stderr


def test_the_parsers_refuse_deep_nesting() -> None:
    with pytest.raises(AttachmentError, match="nested too deeply"):
        LogProofs.parse(DEEP)
    deep_entry = f"{KEY_TAG}\n{'[' * 60000}\n".encode()  # within an entry's 65535 bytes
    with pytest.raises(StatementError, match="nested too deeply"):
        parse_key_entry(deep_entry)
    signed = tlog.sign_note(f"{RELEASE_TAG}\n{'[' * 60000}\n", [tlog.generate_signer("releases.veil.example")])
    assert _release_window(signed) is None  # the gateway's follower skips it
