"""A real ``veil gateway`` process with the echo engine, driven through the ``ohttp`` client side."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
import orjson
import pytest

import ohttp
from ohttp import bhttp
from proxy import OhttpClient
from proxy.verify import make_verifier

from .conftest import Proc, free_port

pytestmark = pytest.mark.integration

WELL_KNOWN = "/.well-known/ohttp-gateway"
JSON = [("content-type", "application/json")]


def gateway_args(port: int, *extra: str) -> list[str]:
    return ["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{port}", *extra]


@pytest.fixture
def gateway(veil_process: Callable[..., Proc]) -> Proc:
    port = free_port()
    return veil_process(gateway_args(port, "--echo-token-delay", "0.02", "--max-request-bytes", "65536"), port)


def client_for(gw: Proc) -> OhttpClient:
    return OhttpClient(
        gw.base + WELL_KNOWN,
        keys_url=gw.base + WELL_KNOWN,
        attestation_url=gw.base + "/.well-known/veil-attestation",
        verifier=make_verifier(allow_simulated=True),
    )


def chat(content: str, **kw: Any) -> bytes:
    return orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": content}], **kw})


async def fetch_config(gw: Proc, kem: ohttp.KemId | None = None) -> ohttp.KeyConfig:
    """The first published config (X-Wing by default), or the first with ``kem``."""
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.base + WELL_KNOWN, headers={"Accept": ohttp.MEDIA_TYPE_KEYS}) as r:
            return [c for c in ohttp.decode_list(await r.read()) if kem is None or c.kem is kem][0]


async def post_raw(gw: Proc, body: bytes, ctype: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s:
        async with s.post(gw.base + WELL_KNOWN, data=body, headers={"Content-Type": ctype}) as r:
            return r.status, dict(r.headers), await r.read()


def sse_data(event: bytes) -> bytes:
    """An SSE event without its comment lines (the gateway's padding): ``data: ...\n\n``."""
    return re.sub(rb"(?m)^:.*\n", b"", event)


def dated(req: bhttp.Request) -> bhttp.Request:
    """``req`` with a current ``Date`` unless it has one (gateways require it)."""
    if req.header(b"date") is not None:
        return req
    return bhttp.Request(method=req.method, scheme=req.scheme, authority=req.authority, path=req.path,
                         headers=(*req.headers, (b"date", formatdate(usegmt=True).encode())), content=req.content)


async def roundtrip(gw: Proc, req: bhttp.Request, **enc_kw: Any) -> tuple[int, dict[str, str], bhttp.Response]:
    """Encapsulate ``req`` (dated) by hand, post it, open the answer."""
    req = dated(req)
    config = await fetch_config(gw)
    enc_req, ctx = ohttp.ClientRequest(config).encapsulate(bhttp.encode_request(req), **enc_kw)
    status, headers, body = await post_raw(gw, enc_req, ohttp.MEDIA_TYPE_REQUEST)
    assert status == 200, body
    return status, headers, bhttp.decode_response(ctx.decapsulate(body))


# -- keys and evidence ---------------------------------------------------------------------------------------------


async def test_keys_are_published_with_caching_headers(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.base + WELL_KNOWN, headers={"Accept": ohttp.MEDIA_TYPE_KEYS}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == ohttp.MEDIA_TYPE_KEYS
            assert r.headers["Cache-Control"].startswith("max-age=")
            configs = ohttp.decode_list(await r.read())
        async with s.get(gateway.base + WELL_KNOWN, headers={"Accept": "text/html"}) as r:
            assert r.status == 406
    assert [c.kem for c in configs] == [ohttp.KemId.XWING, ohttp.KemId.X25519_SHA256]
    assert ohttp.SymmetricSuite(ohttp.KdfId.HKDF_SHA256, ohttp.AeadId.AES_128_GCM) in configs[0].suites


async def test_attestation_bundle_binds_the_served_keys(gateway: Proc) -> None:
    from enclave.attestation import Bundle, report_data

    async with aiohttp.ClientSession() as s:
        async with s.get(gateway.base + WELL_KNOWN) as r:
            keys = await r.read()
        async with s.get(gateway.base + "/.well-known/veil-attestation") as r:
            bundle = Bundle.from_json(await r.read())
        nonce = os.urandom(32)
        async with s.get(gateway.base + "/.well-known/veil-attestation", params={"nonce": nonce.hex()}) as r:
            fresh = Bundle.from_json(await r.read())
        async with s.get(gateway.base + "/.well-known/veil-attestation", params={"nonce": "zz"}) as r:
            assert r.status == 400
    assert bundle.platform == "simulated"
    assert bundle.key_config == keys
    assert bundle.config["key_origin"] == "generated" and bundle.config["engine"] == "echo"
    assert report_data(keys, b"", b"", bundle.config) in bundle.report
    assert fresh.nonce == nonce and report_data(keys, b"", nonce, bundle.config) in fresh.report
    # The default verifier refuses simulated evidence.
    with pytest.raises(Exception, match="SIMULATED"):
        make_verifier(allow_simulated=False)(bundle.to_json(), keys)


# -- the OpenAI API inside -----------------------------------------------------------------------------------------


async def test_chat_non_stream(gateway: Proc) -> None:
    c = client_for(gateway)
    try:
        r = await c.request("POST", "/v1/chat/completions", JSON, chat("the quick brown fox"))
    finally:
        await c.close()
    assert r.status == 200
    data = orjson.loads(r.body)
    assert data["choices"][0]["message"]["content"] == "the quick brown fox"
    assert data["choices"][0]["finish_reason"] == "stop"


async def test_models_and_completions_and_embeddings(gateway: Proc) -> None:
    c = client_for(gateway)
    try:
        models = await c.request("GET", "/v1/models")
        comp = await c.request("POST", "/v1/completions", JSON, orjson.dumps({"model": "echo", "prompt": "a b"}))
        emb = await c.request("POST", "/v1/embeddings", JSON, orjson.dumps({"model": "echo", "input": ["x", "y"]}))
    finally:
        await c.close()
    assert [m["id"] for m in orjson.loads(models.body)["data"]] == ["echo"]
    assert orjson.loads(comp.body)["choices"][0]["text"] == "a b"
    assert len(orjson.loads(emb.body)["data"]) == 2


async def test_stream_arrives_token_by_token_in_order(gateway: Proc) -> None:
    words = [f"w{i}" for i in range(25)]
    c = client_for(gateway)
    try:
        r = await c.request(
            "POST", "/v1/chat/completions", JSON,
            chat(" ".join(words), stream=True, stream_options={"include_usage": True}), chunked=True,
        )
        assert r.status == 200 and r.header(b"content-type") == b"text/event-stream"
        assert r.pieces is not None
        arrivals: list[tuple[float, bytes]] = []
        async for piece in r.pieces:
            arrivals.append((time.monotonic(), piece))
    finally:
        await c.close()
    events = [sse_data(p) for _, p in arrivals]
    assert all(e.startswith(b"data: ") and e.endswith(b"\n\n") for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    payloads = [orjson.loads(e[6:]) for e in events[:-1]]
    text = "".join(p["choices"][0]["delta"].get("content", "") for p in payloads if p["choices"])
    assert text == " ".join(words)
    assert payloads[-1]["usage"]["completion_tokens"] == len(words)
    # With 20 ms between tokens, pieces must arrive spread out, not all at the end.
    spread = arrivals[-1][0] - arrivals[1][0]
    assert spread > 0.3, f"stream was buffered: all events within {spread:.3f}s"


async def test_stream_requested_over_plain_ohttp_gets_whole_stream(gateway: Proc) -> None:
    c = client_for(gateway)
    try:
        r = await c.request("POST", "/v1/chat/completions", JSON, chat("one two", stream=True), chunked=False)
    finally:
        await c.close()
    assert r.status == 200 and r.pieces is None
    assert r.body.count(b"data: ") >= 4 and r.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/chat/completions", b"{not json", 400, None),
        ("POST", "/v1/chat/completions", orjson.dumps({"model": "echo", "messages": []}), 400, "invalid_request"),
        ("POST", "/v1/chat/completions", chat("x", temperature=9), 400, "invalid_request"),
        ("POST", "/v1/chat/completions", orjson.dumps({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}),
         404, "model_not_found"),
        ("POST", "/v1/nothing", b"{}", 404, "unknown_url"),
        ("GET", "/v1/chat/completions", b"", 405, None),
    ],
)
async def test_api_errors_are_openai_json_inside_the_encapsulation(
    gateway: Proc, method: str, path: str, body: bytes, status: int, code: str | None
) -> None:
    req = bhttp.Request(method=method, path=path, headers=[("content-type", "application/json")], content=body)
    _, outer_headers, resp = await roundtrip(gateway, req)
    assert resp.status == status
    err = orjson.loads(resp.content)["error"]
    assert err["message"] and err["type"]
    if code:
        assert err["code"] == code
    # Nothing of the inner response shows outside.
    assert outer_headers["Content-Type"] == ohttp.MEDIA_TYPE_RESPONSE
    assert "application/json" not in " ".join(outer_headers.values())


# -- errors before decapsulation -----------------------------------------------------------------------------------


async def test_wrong_media_type_is_415(gateway: Proc) -> None:
    status, headers, body = await post_raw(gateway, b"hello", "application/json")
    assert status == 415 and headers["Content-Type"] == "application/problem+json"


async def test_malformed_request_is_400(gateway: Proc) -> None:
    config = await fetch_config(gateway)
    status, _, body = await post_raw(gateway, bytes([config.key_id]) + b"\x00\x20\x00\x01", ohttp.MEDIA_TYPE_REQUEST)
    assert status == 400, body
    assert orjson.loads(body)["status"] == 400


async def test_unknown_key_is_422_ohttp_key_problem(gateway: Proc) -> None:
    config = await fetch_config(gateway)
    other = ohttp.KeyConfig(key_id=(config.key_id + 1) % 256, kem=config.kem, public_key=config.public_key,
                            suites=config.suites)
    enc_req, _ = ohttp.ClientRequest(other).encapsulate(bhttp.encode_request(bhttp.Request(method="GET", path="/v1/models")))
    status, headers, body = await post_raw(gateway, enc_req, ohttp.MEDIA_TYPE_REQUEST)
    assert status == 422
    assert headers["Content-Type"] == "application/problem+json"
    assert orjson.loads(body)["type"] == "https://iana.org/assignments/http-problem-types#ohttp-key"


async def test_too_large_is_413(gateway: Proc) -> None:
    status, _, _ = await post_raw(gateway, b"\x00" * 70000, ohttp.MEDIA_TYPE_REQUEST)
    assert status == 413


async def test_chunked_request_without_final_chunk_is_rejected(gateway: Proc) -> None:
    config = await fetch_config(gateway)
    creq = ohttp.ChunkedClientRequest(config)
    inner = bhttp.encode_request(bhttp.Request(method="GET", path="/v1/models"))
    wire = creq.encode_chunk(inner)  # no final chunk
    status, _, body = await post_raw(gateway, wire, ohttp.MEDIA_TYPE_CHUNKED_REQUEST)
    assert status == 400 and b"final" in body


# -- replay --------------------------------------------------------------------------------------------------------


async def test_replayed_request_is_rejected(gateway: Proc) -> None:
    config = await fetch_config(gateway, ohttp.KemId.X25519_SHA256)  # a fixed ephemeral key: X25519's is 32 bytes
    inner = bhttp.encode_request(
        bhttp.Request(method="GET", path="/v1/models", headers=[("date", formatdate(usegmt=True))])
    )
    eph = os.urandom(32)
    first, ctx1 = ohttp.ClientRequest(config).encapsulate(inner, ephemeral_key=eph)
    again, ctx2 = ohttp.ClientRequest(config).encapsulate(inner, ephemeral_key=eph)
    assert first == again  # byte-identical: what a replaying relay would send
    s1, _, b1 = await post_raw(gateway, first, ohttp.MEDIA_TYPE_REQUEST)
    s2, _, b2 = await post_raw(gateway, again, ohttp.MEDIA_TYPE_REQUEST)
    assert s1 == s2 == 200
    assert bhttp.decode_response(ctx1.decapsulate(b1)).status == 200
    replayed = bhttp.decode_response(ctx2.decapsulate(b2))
    assert replayed.status == 400 and orjson.loads(replayed.content)["error"]["code"] == "replayed_request"


async def test_date_outside_window_gets_date_problem(gateway: Proc) -> None:
    stale = formatdate(time.time() - 3600, usegmt=True)
    req = bhttp.Request(method="GET", path="/v1/models", headers=[("date", stale)])
    _, _, resp = await roundtrip(gateway, req)
    assert resp.status == 400
    assert orjson.loads(resp.content)["type"] == "https://iana.org/assignments/http-problem-types#date"
    assert resp.header(b"date") is not None


# -- streams and disconnects, metrics ------------------------------------------------------------------------------


async def metrics_text(gw: Proc) -> str:
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.base + "/metrics") as r:
            assert r.status == 200
            return await r.text()


async def test_client_disconnect_mid_stream_cancels_generation(gateway: Proc) -> None:
    config = await fetch_config(gateway)
    creq = ohttp.ChunkedClientRequest(config)
    inner = bhttp.encode_request(dated(
        bhttp.Request(method="POST", path="/v1/chat/completions", headers=JSON,
                      content=chat(" ".join(["tok"] * 400), stream=True))
    ))
    async with aiohttp.ClientSession() as s:
        r = await s.post(gateway.base + WELL_KNOWN, data=creq.encode_chunk(inner, final=True),
                         headers={"Content-Type": ohttp.MEDIA_TYPE_CHUNKED_REQUEST})
        assert r.status == 200 and r.headers["Content-Type"] == ohttp.MEDIA_TYPE_CHUNKED_RESPONSE
        assert r.headers.get("Incremental") == "?1"
        await r.content.read(200)
        r.close()  # hang up after the first bytes of a 400-token (8 s) stream
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if 'outcome="client_gone"} 1.0' in await metrics_text(gateway):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the gateway did not notice the client going away")
    # The gateway is still healthy and serving.
    c = client_for(gateway)
    try:
        assert (await c.request("GET", "/v1/models")).status == 200
    finally:
        await c.close()


async def test_metrics_have_fixed_labels_only(gateway: Proc) -> None:
    c = client_for(gateway)
    try:
        await c.request("POST", "/v1/chat/completions", JSON, chat("secret-prompt-words"))
    finally:
        await c.close()
    text = await metrics_text(gateway)
    assert 'veil_gateway_requests_total{framing="plain",outcome="ok"}' in text
    assert "veil_gateway_request_seconds_bucket" in text
    assert "secret-prompt-words" not in text and "127.0.0.1" not in text


async def test_logs_carry_no_content(gateway: Proc) -> None:
    c = client_for(gateway)
    try:
        await c.request("POST", "/v1/chat/completions", JSON, chat("zebra-canary-7731"))
        await c.request("POST", "/v1/chat/completions", JSON, b'{"zebra-canary-7732": ')
    finally:
        await c.close()
    gateway.stop()
    log = gateway.log()
    assert "zebra-canary" not in log and "127.0.0.1:" not in log.replace(f"127.0.0.1:{gateway.port}/", "")


# -- options: API keys, key file, rotation -------------------------------------------------------------------------


async def test_api_keys_are_checked_inside_the_encapsulation(veil_process: Callable[..., Proc]) -> None:
    port = free_port()
    gw = veil_process(gateway_args(port), port, env={"VEIL_GATEWAY_API_KEYS": "sk-good"})
    c = client_for(gw)
    try:
        denied = await c.request("GET", "/v1/models")
        allowed = await c.request("GET", "/v1/models", [("authorization", "Bearer sk-good")])
    finally:
        await c.close()
    assert denied.status == 401 and orjson.loads(denied.body)["error"]["code"] == "invalid_api_key"
    assert allowed.status == 200


async def test_key_file_seed_gives_the_derived_config(veil_process: Callable[..., Proc], tmp_path: Path) -> None:
    seed = bytes(range(32))
    kf = tmp_path / "key.json"
    kf.write_text(json.dumps({"key_id": 7, "seed": seed.hex()}))
    port = free_port()
    gw = veil_process(gateway_args(port, "--key-file", str(kf)), port)
    assert await fetch_config(gw) == ohttp.GatewayKey.derive(7, seed).config
    assert "for tests and key-management integrations only" in gw.log()


async def test_rotation_keeps_old_key_for_grace_then_refresh_recovers(veil_process: Callable[..., Proc]) -> None:
    port = free_port()
    gw = veil_process(gateway_args(port, "--rotation-grace", "1.5"), port)
    c = client_for(gw)
    try:
        await c.refresh_keys()
        assert c.keys is not None
        old = c.keys.config
        gw.popen.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.3)
        new = await fetch_config(gw)
        assert new.key_id != old.key_id
        # Within the grace period the old key still works (no refresh needed).
        assert (await c.request("GET", "/v1/models")).status == 200
        assert c.keys.config == old
        await asyncio.sleep(1.5)
        # Retired now: the client gets 422, refreshes once, and succeeds with the new key.
        assert (await c.request("GET", "/v1/models")).status == 200
        assert c.keys.config == new
    finally:
        await c.close()


def test_help_documents_every_option() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "veil_cli", "gateway", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for opt in ("--listen", "--engine", "--key-file", "--replay-window", "--pad-to", "--api-keys-file", "--config"):
        assert opt in out
    assert "VEIL_GATEWAY_LISTEN" in out


@pytest.mark.parametrize("kind", ["auto", "sev-snp", "tdx"])
def test_real_attestation_is_refused_without_tee_hardware(kind: str) -> None:
    import subprocess
    import sys

    if Path("/sys/kernel/config/tsm/report").exists():
        pytest.fail("this test expects a machine without TEE hardware")
    r = subprocess.run([sys.executable, "-m", "veil_cli", "gateway", "--engine", "echo", "--listen",
                        f"127.0.0.1:{free_port()}", "--attestation", kind], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "configfs-tsm" in r.stderr and "--attestation simulated" in r.stderr


# -- operator input under real attestation; the bound configuration -------------------------------------------------


@pytest.mark.parametrize(("how", "flag"), [
    ("--key-file", "--key-file"),
    ("--insecure-allow-simulated-broker", "--insecure-allow-simulated-broker"),
    ("--insecure-allow-disk-model", "--insecure-allow-disk-model"),
    ("env VEIL_GATEWAY_KEY_FILE", "--key-file"),
    ("env VEIL_GATEWAY_INSECURE_ALLOW_DISK_MODEL", "--insecure-allow-disk-model"),
    ("toml key-file", "--key-file"),
])
def test_operator_key_material_and_insecure_switches_are_refused_with_real_attestation(
    how: str, flag: str, tmp_path: Path,
) -> None:
    """Options come from the host or the orchestrator, which the TEE does not trust: with a real provider the
    gateway exits before anything else, naming the option (command line, environment or --config alike)."""
    import subprocess
    import sys

    kf = tmp_path / "key.json"
    kf.write_text(json.dumps({"key_id": 7, "seed": bytes(range(32)).hex()}))
    args = gateway_args(free_port(), "--attestation", "sev-snp")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_GATEWAY_")}
    if how.startswith("--"):
        args += [how, str(kf)] if how == "--key-file" else [how]
    elif how.startswith("env "):
        env[how.removeprefix("env ")] = str(kf) if how.endswith("KEY_FILE") else "1"
    else:
        (tmp_path / "gw.toml").write_text(f'[gateway]\nkey-file = "{kf}"\n')
        args += ["--config", str(tmp_path / "gw.toml")]
    r = subprocess.run([sys.executable, "-m", "veil_cli", *args], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0
    assert f"veil gateway: {flag} is refused with --attestation sev-snp" in r.stderr
    assert "--attestation simulated" in r.stderr and "Traceback" not in r.stderr
    assert "configfs-tsm" not in r.stderr  # refused before the provider is even looked for


async def test_a_policy_requiring_generated_keys_refuses_a_key_file_gateway(
    veil_process: Callable[..., Proc], tmp_path: Path,
) -> None:
    """Under simulated attestation --key-file stays allowed, but the bundle says so, bound with the keys: a client
    whose policy requires key_origin = "generated" refuses that gateway and accepts one that generated its key."""
    from enclave.attestation.policy import Policy
    from proxy.verify import AttestationRefused

    kf = tmp_path / "key.json"
    kf.write_text(json.dumps({"key_id": 7, "seed": bytes(range(32)).hex()}))
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('[config]\nrequire = { key_origin = "generated", pad_to = 64 }\n')
    policy = Policy.load(policy_file)
    p1, p2 = free_port(), free_port()
    from_file = veil_process(gateway_args(p1, "--key-file", str(kf), "--pad-to", "64"), p1)
    generated = veil_process(gateway_args(p2, "--pad-to", "64"), p2)

    async def fetched(gw: Proc) -> tuple[bytes, bytes]:
        async with aiohttp.ClientSession() as s:
            async with s.get(gw.base + WELL_KNOWN) as r:
                keys = await r.read()
            async with s.get(gw.base + "/.well-known/veil-attestation") as r:
                return await r.read(), keys

    verify = make_verifier(allow_simulated=True, policy=policy)
    with pytest.raises(AttestationRefused, match="gateway configuration key_origin") as refused:
        verify(*await fetched(from_file))
    assert refused.value.verdict is not None
    doc = refused.value.verdict.document()
    assert '  key_origin = "file"' in doc and "  pad_to = 64" in doc and '  engine = "echo"' in doc
    verdict, simulated = verify(*await fetched(generated))
    assert simulated and '  key_origin = "generated"' in verdict.document()  # type: ignore[attr-defined]


async def test_an_encrypted_models_manifest_hash_is_bound(veil_process: Callable[..., Proc], tmp_path: Path) -> None:
    import hashlib

    from enclave.attestation import Bundle
    from enclave.model.container import encrypt_model
    from enclave.model.model_key import ModelKey, write_key_file

    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    key = ModelKey.generate("k1")
    write_key_file(tmp_path / "model-key.json", key)
    manifest = encrypt_model(src, tmp_path / "model.enc", key)
    digest = hashlib.sha256((tmp_path / "model.enc" / "veil-model.json").read_bytes()).hexdigest()
    assert manifest.sha256 == digest
    port = free_port()
    gw = veil_process(gateway_args(port, "--encrypted-model", str(tmp_path / "model.enc"), "--model-key-file",
                                   str(tmp_path / "model-key.json"), "--model-tmpfs", str(tmp_path),
                                   "--insecure-allow-disk-model"), port)
    async with aiohttp.ClientSession() as s, s.get(gw.base + "/.well-known/veil-attestation") as r:
        bundle = Bundle.from_json(await r.read())
    assert bundle.config["model_manifest_sha256"] == digest and bundle.config["model_key_origin"] == "file"
