"""``veil broker`` and ``veil gateway --key-broker`` as real processes on loopback (HTTPS to the broker)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from enclave.attestation import Bundle, SimulatedProvider
from enclave.attestation.simulated import MEASUREMENT
from enclave.broker.policy import AttestationPolicy
from enclave.broker.protocol import Attestation, AuthRequest, Challenge, kbs_report_data
from enclave.kbs_client import KbsClient, KbsClientError, TeeKey, attest_broker
from enclave.ohttp_key_set import parse_key_set
from ohttp import KeyRing
from proxy import OhttpClient
from proxy.verify import make_verifier

from .conftest import KEYSET, BrokerFiles, BrokerProc, Proc, free_port, make_broker_files, start_broker

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"
AUDIT_FIELDS = ["time", "event", "resource", "platform", "measurement", "session", "outcome", "reason"]
COOKIE = re.compile(r"^kbs-session-id=[0-9a-f]{32}; Expires=\w{3}, \d{2} \w{3} \d{4} \d{2}:\d{2}:\d{2} GMT$")


class RecordingProvider(SimulatedProvider):
    """Simulated evidence, remembering every bundle it made (to look for its bytes in the audit log)."""

    def __init__(self) -> None:
        super().__init__()
        self.bundles: list[Bundle] = []

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Any = None) -> Bundle:
        b = super().collect(key_config, nonce, gpu_evidence, config)
        self.bundles.append(b)
        return b


def gateway_args(port: int, broker: BrokerProc, policy: Path | None, *extra: str) -> list[str]:
    args = ["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", "--key-broker", broker.base, *extra]
    return args + (["--key-broker-policy", str(policy)] if policy else [])


def new_audit(files: BrokerFiles, before: int) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in files.audit_lines()[before:]]


async def fetch(url: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        return await r.read()


async def client_fetch(broker: BrokerProc, files: BrokerFiles, provider: SimulatedProvider | None = None,
                       policy: str = "allow.toml") -> bytes:
    pin, verdict = await attest_broker(broker.base, AttestationPolicy.load(files.dir / policy), allow_simulated=True)
    assert verdict.ok and verdict.simulated
    async with KbsClient(broker.base, provider or SimulatedProvider(), ssl=pin) as c:
        data = await c.get_resource(KEYSET)
        assert c.token is not None and c.token.count(".") == 2
        return data


# -- raw protocol, for what the client never does (replays, forged tokens) ------------------------------------------


def http() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(ssl=False))


async def raw_auth(s: aiohttp.ClientSession, base: str) -> tuple[str, Challenge, bytes]:
    async with s.post(base + "/kbs/v0/auth", data=AuthRequest(tee="sample").encode(),
                      headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()
        assert COOKIE.match(r.headers["Set-Cookie"]), r.headers["Set-Cookie"]
        body = await r.read()
        return r.cookies["kbs-session-id"].value, Challenge.decode(body), body


def attestation(ch: Challenge, key: TeeKey, provider: SimulatedProvider) -> bytes:
    bundle = provider.collect(kbs_report_data(ch.nonce, key.jwk, ch.hash_algorithm))
    return Attestation(nonce=ch.nonce, tee_pubkey=key.jwk, primary_evidence=orjson.loads(bundle.to_json())).encode()


async def call(s: aiohttp.ClientSession, method: str, url: str, *, cookie: str | None = None,
               body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    h = dict(headers or {})
    if cookie:
        h["Cookie"] = f"kbs-session-id={cookie}"
    async with s.request(method, url, data=body, headers=h) as r:
        raw = await r.read()
        return r.status, orjson.loads(raw) if raw[:1] == b"{" else raw


def error_type(obj: Any) -> str:
    assert isinstance(obj, dict) and list(obj) == ["type", "detail"], obj
    assert obj["type"].startswith("https://github.com/confidential-containers/kbs/errors/")
    return str(obj["type"]).rsplit("/", 1)[1]


# -- end to end ----------------------------------------------------------------------------------------------------


async def test_two_gateways_fetch_one_key_set_and_publish_identical_configs(
        broker: BrokerProc, files: BrokerFiles, veil_process: Callable[..., Proc]) -> None:
    before = len(files.audit_lines())
    gws = [veil_process(gateway_args(p, broker, files.dir / "allow.toml", "--insecure-allow-simulated-broker"), p)
           for p in (free_port(), free_port())]
    k1, k2 = [await fetch(g.base + WELL_KNOWN) for g in gws]
    assert k1 == k2 == KeyRing(parse_key_set(files.keyset_plain)).encode_published()
    # Keys fetched (and verified) at one replica decrypt at the other: one private key set for the fleet.
    c = OhttpClient(gws[1].base + WELL_KNOWN, keys_url=gws[0].base + WELL_KNOWN,
                    attestation_url=gws[0].base + "/.well-known/veil-attestation",
                    verifier=make_verifier(allow_simulated=True))
    try:
        r = await c.request("POST", "/v1/chat/completions", [("content-type", "application/json")], orjson.dumps(
            {"model": "echo", "messages": [{"role": "user", "content": "one fleet"}]}))
    finally:
        await c.close()
    assert r.status == 200 and orjson.loads(r.body)["choices"][0]["message"]["content"] == "one fleet"
    lines = new_audit(files, before)
    assert [(x["event"], x["outcome"]) for x in lines].count(("resource", "released")) == 2
    assert [(x["event"], x["outcome"]) for x in lines].count(("attest", "attested")) == 2
    for x in lines:
        assert list(x) == AUDIT_FIELDS and x["platform"] == "simulated" and x["measurement"] == MEASUREMENT.hex()
    assert len({x["session"] for x in lines}) == 2
    # Which broker, under which policy of its evidence, is bound into each gateway's own evidence.
    import hashlib

    config = orjson.loads(await fetch(gws[0].base + "/.well-known/veil-attestation"))["config"]
    assert config["key_origin"] == "broker" and config["key_broker"] == broker.base
    assert config["key_broker_policy_sha256"] == hashlib.sha256((files.dir / "allow.toml").read_bytes()).hexdigest()


async def test_audit_log_one_line_per_release_and_no_evidence(broker: BrokerProc, files: BrokerFiles) -> None:
    before = len(files.audit_lines())
    provider = RecordingProvider()
    assert await client_fetch(broker, files, provider) == files.keyset_plain
    assert await client_fetch(broker, files, provider) == files.keyset_plain
    lines = new_audit(files, before)
    assert [x["outcome"] for x in lines] == ["attested", "released", "attested", "released"]
    assert [x["resource"] for x in lines if x["outcome"] == "released"] == [KEYSET, KEYSET]
    text = "\n".join(files.audit_lines()[before:])
    assert len(provider.bundles) == 2
    for b in provider.bundles:
        obj = orjson.loads(b.to_json())
        for needle in (obj["report"], obj["key_config"], b.report.hex(), b.key_config.hex(), b.report[:48].hex()):
            assert needle not in text
    assert "127.0.0.1" not in text and "seed" not in text and "kbs-session-id" not in text


async def test_protocol_on_the_wire_replays_tokens_and_errors(broker: BrokerProc, files: BrokerFiles) -> None:
    base = broker.base
    before = len(files.audit_lines())
    provider = SimulatedProvider()
    async with http() as s:
        cookie1, ch1, raw = await raw_auth(s, base)
        assert list(orjson.loads(raw)) == ["nonce", "extra-params"] and orjson.loads(raw)["extra-params"] == ""
        key = TeeKey()
        body1 = attestation(ch1, key, provider)
        status, obj = await call(s, "POST", base + "/kbs/v0/attest", cookie=cookie1, body=body1)
        assert status == 200 and list(obj) == ["token"]
        token = obj["token"]

        # Replays: the same Attestation on the same session, and the old nonce on a new session.
        status, obj = await call(s, "POST", base + "/kbs/v0/attest", cookie=cookie1, body=body1)
        assert status == 401 and error_type(obj) == "AttestationError" and "already used" in obj["detail"]
        cookie2, ch2, _ = await raw_auth(s, base)
        status, obj = await call(s, "POST", base + "/kbs/v0/attest", cookie=cookie2, body=body1)
        assert status == 401 and "nonce" in obj["detail"]
        status, obj = await call(s, "POST", base + "/kbs/v0/attest", cookie=cookie2,
                                 body=attestation(ch2, TeeKey(), provider))
        assert status == 401 and "already used" in obj["detail"]  # one try per nonce
        # Evidence bound to another key than the one in runtime-data is refused.
        cookie3, ch3, _ = await raw_auth(s, base)
        swapped = orjson.loads(attestation(ch3, TeeKey(), provider))
        swapped["runtime-data"]["tee-pubkey"] = TeeKey().jwk
        status, obj = await call(s, "POST", base + "/kbs/v0/attest", cookie=cookie3, body=orjson.dumps(swapped))
        assert status == 401 and "passed no resource policy" in obj["detail"]

        # The resource, by cookie and by bearer token; only our key opens it.
        status, obj = await call(s, "GET", f"{base}/kbs/v0/resource/{KEYSET}", cookie=cookie1)
        assert status == 200 and list(obj) == ["protected", "encrypted_key", "iv", "ciphertext", "tag"]
        assert key.decrypt(orjson.dumps(obj)) == files.keyset_plain
        status, obj = await call(s, "GET", f"{base}/kbs/v0/resource/{KEYSET}",
                                 headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and key.decrypt(orjson.dumps(obj)) == files.keyset_plain
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        status, obj = await call(s, "GET", f"{base}/kbs/v0/resource/{KEYSET}",
                                 headers={"Authorization": f"Bearer {forged}"})
        assert status == 401 and error_type(obj) == "TokenVerifierError"

        # Error shapes and statuses as Trustee answers them.
        status, obj = await call(s, "GET", f"{base}/kbs/v0/resource/{KEYSET}")
        assert status == 401 and error_type(obj) == "TokenNotFound"
        status, obj = await call(s, "GET", f"{base}/kbs/v0/resource/{KEYSET}", cookie=cookie2)
        assert status == 401 and error_type(obj) == "TokenNotFound"
        status, obj = await call(s, "GET", f"{base}/kbs/v0/resource/default/ohttp/other", cookie=cookie1)
        assert status == 404 and error_type(obj) == "InvalidRequestPath"
        status, obj = await call(s, "GET", f"{base}/kbs/v0/nebula-ca/credential")
        assert status == 404 and error_type(obj) == "PluginNotFound"
        status, obj = await call(s, "POST", base + "/kbs/v0/auth",
                                 body=b'{"version": "0.3.0", "tee": "sample", "extra-params": ""}')
        assert status == 401 and error_type(obj) == "AttestationError" and "Version Mismatch" in obj["detail"]
    outcomes = [(x["event"], x["outcome"]) for x in new_audit(files, before)]
    assert outcomes.count(("attest", "refused")) == 4 and outcomes.count(("resource", "released")) == 2


async def test_session_expires(files: BrokerFiles, broker_process: Callable[..., BrokerProc], tmp_path: Path) -> None:
    b = broker_process(files.args("--insecure-allow-simulated", "--session-timeout", "0.5",
                                  "--audit-log", str(tmp_path / "a.jsonl")))
    async with http() as s:
        cookie, ch, _ = await raw_auth(s, b.base)
        await asyncio.sleep(0.7)
        status, obj = await call(s, "POST", b.base + "/kbs/v0/attest", cookie=cookie,
                                 body=attestation(ch, TeeKey(), SimulatedProvider()))
    assert status == 401 and "no live session" in obj["detail"]


# -- refusals ------------------------------------------------------------------------------------------------------


async def test_measurement_not_in_policy_is_refused(files: BrokerFiles, broker_process: Callable[..., BrokerProc],
                                                    veil_process: Callable[..., Proc], tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    b = broker_process(files.args("--insecure-allow-simulated", "--audit-log", str(audit), policy="deny.toml"))
    with pytest.raises(KbsClientError, match="AttestationError.*measurement"):
        await client_fetch(b, files)
    port = free_port()
    with pytest.raises(RuntimeError, match="key broker: KBS attest refused"):
        veil_process(gateway_args(port, b, files.dir / "allow.toml", "--insecure-allow-simulated-broker"), port)
    lines = [orjson.loads(x) for x in audit.read_text().splitlines()]
    assert [x["outcome"] for x in lines] == ["refused", "refused"]
    assert all(x["measurement"] == MEASUREMENT.hex() and "measurement" in x["reason"] for x in lines)


async def test_simulated_evidence_refused_without_the_flag(files: BrokerFiles, tmp_path: Path,
                                                           broker_process: Callable[..., BrokerProc]) -> None:
    b = broker_process(files.args("--audit-log", str(tmp_path / "a.jsonl")))
    with pytest.raises(KbsClientError, match="AttestationError.*platform accepted"):
        await client_fetch(b, files)


async def test_gateway_refuses_a_broker_it_cannot_trust(broker: BrokerProc, files: BrokerFiles,
                                                        veil_process: Callable[..., Proc]) -> None:
    for extra, policy, why in [((), files.dir / "allow.toml", "SIMULATED|simulated"),
                               (("--insecure-allow-simulated-broker",), files.dir / "deny.toml", "measurement"),
                               (("--insecure-allow-simulated-broker",), None, "measurement")]:
        port = free_port()
        with pytest.raises(RuntimeError, match=f"failed attestation(.|\n)*({why})"):
            veil_process(gateway_args(port, broker, policy, *extra), port)
    port = free_port()
    args = gateway_args(port, broker, files.dir / "allow.toml", "--insecure-allow-simulated-broker")
    args[args.index(broker.base)] = broker.base.replace("https://", "http://")
    with pytest.raises(RuntimeError, match="must be https"):
        veil_process(args, port)


async def test_pin_stops_a_broker_that_is_not_the_attested_one(
        broker: BrokerProc, files: BrokerFiles, broker_process: Callable[..., BrokerProc], tmp_path: Path) -> None:
    other = broker_process(files.args("--insecure-allow-simulated", "--audit-log", str(tmp_path / "a.jsonl")))
    pin, _ = await attest_broker(broker.base, AttestationPolicy.load(files.dir / "allow.toml"), allow_simulated=True)
    # Same evidence would verify, same secrets are there: but its TLS key is not the attested one (a stand-in for a
    # man in the middle that relays the real broker's evidence).
    async with KbsClient(other.base, SimulatedProvider(), ssl=pin) as c:
        with pytest.raises(KbsClientError, match="not the one its evidence binds"):
            await c.get_resource(KEYSET)


# -- at rest -------------------------------------------------------------------------------------------------------


def _files_containing(root: Path, needles: list[bytes]) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


def _secrets(keyset: bytes) -> list[bytes]:
    """Every key's secret (a DeriveKeyPair seed, or X-Wing's own 32-byte seed), as hex text and as bytes."""
    hexes = [e["seed"] if "seed" in e else e["private_key"] for e in orjson.loads(keyset)]
    return [x.encode() for x in hexes] + [bytes.fromhex(x) for x in hexes]


async def test_secrets_at_rest_are_sealed(broker: BrokerProc, files: BrokerFiles,
                                          broker_process: Callable[..., BrokerProc], tmp_path: Path) -> None:
    sealed = (files.dir / "keyset.sealed").read_bytes()
    assert orjson.loads(sealed)["format"] == "veil-sealed-v1"
    assert not _files_containing(files.dir, [*_secrets(files.keyset_plain), files.keyset_plain])

    # A key set the broker makes itself: it exists in plaintext only inside the broker (and the attested gateway).
    gen = make_broker_files(tmp_path / "gen")
    (gen.dir / "keyset.sealed").unlink()
    b = broker_process(gen.args("--insecure-allow-simulated", resources_extra='generate = "ohttp-keyset"\n'))
    plain = await client_fetch(b, gen)
    assert not _files_containing(gen.dir, [*_secrets(plain), plain])
    assert orjson.loads((gen.dir / "keyset.sealed").read_bytes())["resource"] == KEYSET


def test_broker_without_a_kek_seals_per_process_and_says_what_it_cannot_open(files: BrokerFiles) -> None:
    """Simulated attestation without --kek-file: a key made for this process, so the operator-sealed key set does
    not open, and the broker says why instead of starting."""
    args = files.args()
    i = args.index("--kek-file")
    del args[i:i + 2]
    with pytest.raises(RuntimeError, match="another KEK.*only secrets it generates itself"):
        start_broker(args, free_port(), env={"VEIL_BROKER_KEK": "", "VEIL_BROKER_KEK_FILE": ""})


@pytest.mark.parametrize(("extra", "env", "named"), [
    (["--kek-file", "KEK"], {}, "--kek-file"),
    ([], {"VEIL_BROKER_KEK": "00" * 32}, "$VEIL_BROKER_KEK"),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem"], {}, "--tls-cert"),
    (["--tls-key", "k.pem"], {}, "--tls-key"),
    (["--insecure-allow-simulated"], {}, "--insecure-allow-simulated"),
    ([], {"VEIL_BROKER_INSECURE_ALLOW_SIMULATED": "1"}, "--insecure-allow-simulated"),
])
def test_operator_key_material_and_insecure_switches_are_refused_with_real_attestation(
    files: BrokerFiles, extra: list[str], env: dict[str, str], named: str,
) -> None:
    import os
    import subprocess
    import sys

    args = ["broker", "--attestation", "sev-snp", "--resources", str(files.write_resources()),
            *[str(files.kek_file) if a == "KEK" else a for a in extra]]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_BROKER_")}
    r = subprocess.run([sys.executable, "-m", "veil_cli", *args], capture_output=True, text=True, timeout=60,
                       env={**clean, **env})
    assert r.returncode != 0
    assert f"veil broker: {named} is refused with --attestation sev-snp" in r.stderr, r.stderr
    assert "--attestation simulated" in r.stderr and "Traceback" not in r.stderr
