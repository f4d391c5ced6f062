"""A gateway's proofs that verify but carry no release admitting it (in a log shared by publishers, another
publisher's newer releases filled its 16 places) send a client with a log URL to the whole log, and its verdict line
says so; without a log URL, and for any other failure of the proofs, it is still a refusal."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path

import pytest

import tlog
from enclave.attestation import Bundle
from proxy.verify import AttestationRefused, Transparency, make_verifier
from transparency import CERT_KEY
from transparency.client import TrustedLog
from transparency.follow import LogFollower
from transparency.log import Log
from transparency.log_cli import key_entry_for_bundle
from transparency.proofs import NoReleaseInProofs
from transparency.statements import release_text, sign_release
from transparency.verify import verify_with_proofs_or_log

from .test_log_proofs import _offline, _tamper_proof
from .test_publisher_flow import _dir_fetch, _gateway, _release


def _with_proofs(bundle: bytes, follower: LogFollower) -> bytes:
    b = Bundle.from_json(bundle)
    proofs = follower.proofs_for(b.key_config, time.time())
    assert proofs is not None
    return dataclasses.replace(b, certs={**b.certs, CERT_KEY: proofs.encode()}).to_json()


def test_proofs_with_only_another_publishers_releases_fall_back_to_the_whole_log(tmp_path: Path) -> None:
    ours, theirs = tlog.generate_signer("releases.veil.example"), tlog.generate_signer("releases.other.example")
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    bundle, keys = _gateway()
    log.append([_release(ours, "ours"), key_entry_for_bundle(bundle, "gw", 1, None),
                *(_release(theirs, f"theirs {i}") for i in range(16))])
    served = _with_proofs(bundle, LogFollower(_dir_fetch(log.public)))  # an unfiltered gateway: theirs only
    t = Transparency([ours.verifier], "http://unused.invalid/", log.signer.verifier, state_file=tmp_path / "s.json",
                     fetch=_dir_fetch(log.public))
    verdict, _ = make_verifier(allow_simulated=True, transparency=t)(served, keys)
    line = [c.name for c in verdict.checks if c.name.startswith("logged:")]  # type: ignore[attr-defined]
    assert line == ["logged: release 'ours', key configuration at index 1 of 18 (read from the log: the gateway's "
                    "proofs carry no unexpired release of the publisher)"]
    # without a log to read (veil attest verify without --log) it stays a refusal
    trusted = TrustedLog(log.signer.verifier, _offline, None)
    with pytest.raises(NoReleaseInProofs):
        verify_with_proofs_or_log(Bundle.from_json(served), _proofs_of(served), trusted, [ours.verifier],
                                  now=dt.datetime.now(dt.UTC), allow_simulated=True, read_log=False)
    # a proof that does not verify is refused, never a reason to read the log
    b = Bundle.from_json(served)
    tampered = dataclasses.replace(b, certs={**b.certs, CERT_KEY: _tamper_proof(_proofs_of(served)).encode()})
    with pytest.raises(AttestationRefused, match=r"\(log proof does not verify\)"):
        make_verifier(allow_simulated=True, transparency=t)(tampered.to_json(), keys)


def _proofs_of(bundle_json: bytes):  # type: ignore[no-untyped-def]
    from transparency.verify import bundle_proofs

    return bundle_proofs(Bundle.from_json(bundle_json))


def test_proofs_whose_releases_do_not_admit_the_gateway_fall_back_to_the_whole_log(tmp_path: Path) -> None:
    ours = tlog.generate_signer("releases.veil.example")
    log = Log.init(tmp_path / "log", "log.veil.example/test")
    bundle, keys = _gateway()
    nb = int(time.time()) - 60
    vllm_only = sign_release(release_text("vllm only", nb, nb + 86400, {
        "platforms": ["simulated"], "config": {"require": {"engine": "vllm"}}}), ours)
    log.append([_release(ours, "admits"), vllm_only, key_entry_for_bundle(bundle, "gw", 1, None)])
    served = _with_proofs(bundle, LogFollower(_dir_fetch(log.public), max_releases=1))  # "vllm only" travels
    t = Transparency([ours.verifier], "http://unused.invalid/", log.signer.verifier, state_file=None,
                     fetch=_dir_fetch(log.public))
    verdict, _ = make_verifier(allow_simulated=True, transparency=t)(served, keys)
    names = [c.name for c in verdict.checks]  # type: ignore[attr-defined]
    assert "logged: release 'admits', key configuration at index 2 of 3 (read from the log: no release among the " \
           "gateway's proofs admits it)" in names
