"""The gateway serves its log proofs with its evidence (issue 17), real processes on loopback: ``veil log serve``,
``veil gateway --transparency-log URL`` (and one without), ``veil relay``, ``veil proxy --publisher --log --log-key``
and the OpenAI SDK. The gateway picks up its key entry once the operator has logged it; a client then verifies from
the bundle's proofs with the log server stopped (its state already holds that checkpoint); a forked log (the state
keeps another root of the same size) and a rolled-back log are refused through the running chain, and nothing
reaches the gateway.

SIMULATED attestation throughout (``veil gateway --engine echo``, ``--insecure-allow-simulated``): no TEE here."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from enclave.attestation import Bundle
from tests.harness import Proc, free_port, start_veil, stop_all
from tests.transparency._chain import (gateway_requests, get, refused_chat, release_and_log, veil_run,
                                       wait_for_log_proofs)
from transparency import CERT_KEY, LogProofs


@dataclass
class World:
    tmp: Path
    log_dir: Path
    log: Proc
    gw: Proc  # --transparency-log
    plain: Proc  # without: its clients read the whole log
    relay: Proc
    trust: list[str]
    procs: list[Proc]

    def bundle(self, name: str = "gw") -> bytes:
        return get(f"{self.relay.base}/{name}/attestation")

    def proxy(self, name: str, state: Path, *extra: str, health: str = "/veil-config.json") -> Proc:
        port = free_port()
        p = start_veil(["proxy", "--listen", f"127.0.0.1:{port}", "--relay", f"{self.relay.base}/{name}",
                        "--log-state", str(state), *self.trust, *extra], port, health=health)
        self.procs.append(p)
        return p


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("proofs-chain")
    pub, log_key = release_and_log(tmp, "veil 1.0")
    log_dir = tmp / "log"
    lp, ga, gb, rp = (free_port() for _ in range(4))
    procs: list[Proc] = []
    try:
        log = start_veil(["log", "serve", "--dir", str(log_dir), "--port", str(lp)], lp, health="/checkpoint")
        procs.append(log)
        gw = start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{ga}", "--transparency-log",
                         log.base, "--transparency-refresh", "0.2"], ga)
        procs.append(gw)
        plain = start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gb}"], gb)
        procs.append(plain)
        relay = start_veil(["relay", "--listen", f"127.0.0.1:{rp}",
                            "--gateway", f"gw=http://127.0.0.1:{ga}/.well-known/ohttp-gateway",
                            "--gateway", f"other=http://127.0.0.1:{gb}/.well-known/ohttp-gateway"], rp)
        procs.append(relay)
        w = World(tmp, log_dir, log, gw, plain, relay,
                  ["--publisher", pub, "--log", log.base, "--log-key", log_key, "--insecure-allow-simulated"], procs)
        assert CERT_KEY not in Bundle.from_json(w.bundle()).certs  # nothing logged yet: no proofs
        # the operator logs the release and both gateways' key configurations, from the evidence they serve
        (tmp / "gw.json").write_bytes(get(gw.base + "/.well-known/veil-attestation"))
        (tmp / "plain.json").write_bytes(get(plain.base + "/.well-known/veil-attestation"))
        veil_run("log", "append", "--dir", str(log_dir), str(tmp / "rel.note"), "--evidence", str(tmp / "gw.json"),
                 "--gateway", "gw-1")
        veil_run("log", "append", "--dir", str(log_dir), "--evidence", str(tmp / "plain.json"), "--gateway", "gw-2")
        wait_for_log_proofs(f"{relay.base}/gw/attestation", gw)
        yield w
    finally:
        stop_all(procs, remove_logs=True)


def _proofs(bundle: bytes) -> LogProofs:
    return LogProofs.parse(Bundle.from_json(bundle).certs[CERT_KEY])


def test_the_gateway_attaches_the_proofs_of_its_logged_key_leaving_the_evidence_as_it_was(world: World) -> None:
    served, logged = Bundle.from_json(world.bundle()), Bundle.from_json((world.tmp / "gw.json").read_bytes())
    assert (served.report, served.key_config, served.config, served.issued_at) == \
        (logged.report, logged.key_config, logged.config, logged.issued_at)
    proofs = _proofs(world.bundle())
    assert proofs.key.index == 1 and [r.index for r in proofs.releases] == [0]
    assert proofs.key.entry.startswith(b"veil/key/v1\n")


def _forked_state(path: Path, bundle: bytes) -> None:
    cp = _proofs(bundle).checkpoint.split("\n")
    path.write_text(json.dumps({cp[0]: {"size": int(cp[1]), "root": base64.b64encode(os.urandom(32)).decode()}}))


def test_a_forked_log_is_refused_through_the_chain_and_nothing_is_sent(world: World) -> None:
    state = world.tmp / "forked.json"
    _forked_state(state, world.bundle())  # this client saw another tree of the size the gateway's proofs use
    proxy = world.proxy("gw", state)
    before = gateway_requests(world.gw.base)
    err = refused_chat(proxy.base, "forked")
    assert err.status_code == 502
    assert "refused by the transparency log (log fork or rollback against the last checkpoint seen)" in str(err)
    assert gateway_requests(world.gw.base) == before


def test_a_rolled_back_log_is_refused_through_the_chain_and_nothing_is_sent(world: World) -> None:
    checkpoint = world.log_dir / "public" / "checkpoint"
    old = checkpoint.read_bytes()
    veil_run("log", "append", "--dir", str(world.log_dir), str(world.tmp / "rel.note"), "--evidence",
             str(world.tmp / "plain.json"), "--gateway", "gw-2", "--days", "29")  # the log grows by one entry
    new = checkpoint.read_bytes()
    state = world.tmp / "rolled.json"
    veil_run("attest", "verify", str(world.tmp / "plain.json"), *world.trust, "--log-state", str(state))
    try:
        checkpoint.write_bytes(old)  # the log serves its older (validly signed) checkpoint again
        proxy = world.proxy("other", state)
        err = refused_chat(proxy.base, "rolled back")
        assert err.status_code == 502
        assert "(log fork or rollback against the last checkpoint seen)" in str(err)
        assert "rolled-back" in str(err)
        assert gateway_requests(world.plain.base) == 0
    finally:
        checkpoint.write_bytes(new)


def test_the_client_verifies_from_the_proofs_with_the_log_server_stopped(world: World) -> None:
    """Last in this module: it stops the log server."""
    bundle = world.bundle()  # what the relay serves (and keeps serving: cached for the keys' max-age)
    (world.tmp / "served.json").write_bytes(bundle)
    state = world.tmp / "offline.json"
    r = veil_run("attest", "verify", str(world.tmp / "served.json"), *world.trust, "--log-state", str(state))
    assert "(proofs from the gateway)" in r.stdout  # the state now holds the bundle's checkpoint
    world.log.stop()
    with pytest.raises(OSError):
        get(world.log.base + "/checkpoint")
    # veil attest verify without --log and without a state file: entirely offline
    no_log = [a for a in world.trust if a not in ("--log", world.log.base)]
    r = veil_run("attest", "verify", str(world.tmp / "served.json"), *no_log)
    assert "(proofs from the gateway)" in r.stdout and "RESULT: PASS" in r.stdout
    proxy = world.proxy("gw", state, health="/healthz")
    client = openai.OpenAI(base_url=proxy.base + "/v1", api_key="unused", max_retries=0)
    r2 = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "offline"}])
    assert r2.choices[0].message.content == "offline"
    doc = get(proxy.base + "/v1/veil/attestation").decode()
    assert "logged: release 'veil 1.0', key configuration at index 1 of" in doc
    assert "(proofs from the gateway)" in doc
    # and a bundle without proofs needs the log, which is gone: refused, never accepted unchecked
    r3 = veil_run("attest", "verify", str(world.tmp / "plain.json"), *world.trust, "--log-state", str(state),
                  ok=False)
    assert r3.returncode == 5 and "log unreachable" in r3.stderr
