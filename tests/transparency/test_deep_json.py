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
from transparency.statements import KEY_TAG, MAX_TIME, RELEASE_TAG, canonical_json, parse_key_entry

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


def test_nesting_the_parser_takes_but_the_canonical_check_does_not_is_refused_too() -> None:
    # json.loads takes ~990 levels less the caller's stack depth; the canonical re-encoding recurses deeper. For
    # some depth in this range one of the two runs out of stack at any caller's depth: both must be a StatementError.
    opener = '{"a":'
    for n in range(900, 1000):
        entry = f"{KEY_TAG}\n{opener * n}1{'}' * n}\n".encode()
        with pytest.raises(StatementError):
            parse_key_entry(entry)


def test_a_validity_window_past_year_9999_or_before_1970_is_refused() -> None:
    # A monitor judging evidence at 10**20 would stop with an overflow on every restart (its position is in memory),
    # blind to everything logged after that entry; such windows are refused where they are parsed.
    def entry(nb: int, na: int) -> bytes:
        body = canonical_json({"gateway": "gw", "key_ids": [1], "key_config_sha256": "ab" * 32,
                               "evidence_sha256": "cd" * 32, "not_before": nb, "not_after": na, "release": None})
        return f"{KEY_TAG}\n{body}\n".encode()

    assert parse_key_entry(entry(0, MAX_TIME)).not_after == MAX_TIME
    for nb, na in ((10**20, 10**20 + 10), (-5, 10), (1, MAX_TIME + 1)):
        with pytest.raises(StatementError, match="year 9999"):
            parse_key_entry(entry(nb, na))


def test_a_bundle_whose_certs_is_not_an_object_is_malformed_not_a_crash() -> None:
    import orjson

    from enclave.attestation import BundleError

    bundle, _ = _gateway()
    for certs in ([1], "x", 3):
        with pytest.raises(BundleError, match="'certs' must be a JSON object"):
            Bundle.from_json(orjson.dumps({**orjson.loads(bundle), "certs": certs}))
