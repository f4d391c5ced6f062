"""The client proxy's and the in-process transport's log check (``veil proxy --publisher --log --log-key``,
``VeilTransport(publisher=, log=, log_key=)``): ``proxy.verify.make_verifier(transparency=...)`` derives the policy
from the publisher's logged releases, a local policy narrows it (both must pass), and each log refusal (key not in
the log, another publisher, unreachable, rollback) is an ``AttestationRefused`` that says which. Simulated
attestation (no TEE) throughout."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

import tlog
from enclave.attestation import Policy
from ohttp import GatewayKey, encode_list
from proxy.client import Transparency, VeilAsyncTransport
from proxy.verify import AttestationRefused, make_verifier
from transparency.log import Log
from transparency.log_cli import key_entry_for_bundle

from .test_publisher_flow import _dir_fetch, _gateway, _log_world, _release


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    publisher, log, bundle, keys, rel = _log_world(tmp_path)
    log.append([rel, key_entry_for_bundle(bundle, "gw-1", 30, tlog.leaf_hash(rel).hex())])
    return publisher, log, bundle, keys, tmp_path


def _t(log: Log, publisher: tlog.Signer, state: Path | None, public: Path | None = None) -> Transparency:
    return Transparency([publisher.verifier], "http://unused.invalid/", log.signer.verifier, state_file=state,
                        fetch=_dir_fetch(public or log.public))


def test_logged_gateway_is_accepted_and_marked_blocking(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, keys, tmp = world
    verify = make_verifier(allow_simulated=True, transparency=_t(log, publisher, tmp / "s.json"))
    assert getattr(verify, "blocking", False)  # OhttpClient runs it with asyncio.to_thread
    verdict, simulated = verify(bundle, keys)
    assert simulated and any("logged: release 'veil 1.0'" in c.name for c in verdict.checks)  # type: ignore[attr-defined]
    with pytest.raises(AttestationRefused, match="fetched key configuration"):
        verify(bundle, encode_list([GatewayKey.generate(8).config]))  # evidence for other keys than fetched


def test_unlogged_key_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, _, _, tmp = world
    other, keys = _gateway()
    verify = make_verifier(allow_simulated=True, transparency=_t(log, publisher, tmp / "s.json"))
    with pytest.raises(AttestationRefused, match=r"not in the log.*split view"):
        verify(other, keys)


def test_other_publisher_and_unreachable_log_are_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, keys, tmp = world
    impostor = tlog.generate_signer("releases.veil.example")
    with pytest.raises(AttestationRefused, match="no unexpired release signed by the publisher"):
        make_verifier(allow_simulated=True, transparency=_t(log, impostor, None))(bundle, keys)
    with pytest.raises(AttestationRefused, match=r"\(log unreachable\)"):
        make_verifier(allow_simulated=True, transparency=_t(log, publisher, None, tmp / "nowhere"))(bundle, keys)


def test_rolled_back_log_is_refused(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, keys, tmp = world
    old = tmp / "old-public"
    shutil.copytree(log.public, old)
    log.append([_release(publisher, "veil 1.1")])
    state = tmp / "s.json"
    make_verifier(allow_simulated=True, transparency=_t(log, publisher, state))(bundle, keys)
    with pytest.raises(AttestationRefused, match=r"fork or rollback"):
        make_verifier(allow_simulated=True, transparency=_t(log, publisher, state, old))(bundle, keys)


def test_local_policy_narrows_the_release(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, bundle, keys, tmp = world
    narrow = Policy.from_dict({"platforms": ["simulated"], "config": {"require": {"engine": "vllm"}}})
    verify = make_verifier(allow_simulated=True, policy=narrow, transparency=_t(log, publisher, None))
    with pytest.raises(AttestationRefused, match=r"local policy"):
        verify(bundle, keys)
    same = Policy.from_dict({"platforms": ["simulated"], "config": {"require": {"engine": "echo"}}})
    assert make_verifier(allow_simulated=True, policy=same, transparency=_t(log, publisher, None))(bundle, keys)


def test_transport_takes_publisher_log_and_log_key(world) -> None:  # type: ignore[no-untyped-def]
    publisher, log, _, _, tmp = world

    async def build() -> None:
        t = VeilAsyncTransport("http://127.0.0.1:9/r", allow_simulated=True, publisher=publisher.verifier.vkey(),
                               log="http://127.0.0.1:9/log",
                               log_key=log.vkey, log_state=tmp / "s.json")
        assert getattr(t.client._verifier, "blocking", False)
        await t.aclose()
        with pytest.raises(TypeError, match="go together"):
            VeilAsyncTransport("http://127.0.0.1:9/r", publisher=log.vkey)

    asyncio.run(build())
