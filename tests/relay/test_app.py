"""The app as a whole (app.py, config.py, metrics.py): its public API, config validation, ``/healthz``, and
metrics that never carry a per-client label."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

import privacypass
import proxy.relay
from proxy.relay import RelayConfig
from proxy.relay.metrics import RelayMetrics

from .conftest import MEDIA_REQ, WELL_KNOWN, MakeRelay, StandInGateway

CLIENTS = ("198.51.100.7", "203.0.113.9", "2001:db8::1")


def test_one_public_api() -> None:
    assert sorted(proxy.relay.__all__) == ["RelayConfig", "create_app"]


@pytest.mark.parametrize(("gateways", "proxies", "says"), [
    ({"bad name": "http://127.0.0.1:1/"}, (), "gateway name"),
    ({"../x": "http://127.0.0.1:1/"}, (), "gateway name"),
    ({"gw": " , "}, (), "has no URL"),
    ({"gw": "ftp://127.0.0.1/"}, (), "must be http(s)://"),
    ({"gw": "vsock://nope/x"}, (), "vsock"),
    ({"gw": "http://127.0.0.1:1/"}, ("not-a-network",), "--trusted-proxy"),
])
def test_config_refuses_bad_values(gateways: dict[str, str], proxies: tuple[str, ...], says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        RelayConfig(gateways=gateways, trusted_proxies=proxies)


async def test_healthz(relay: MakeRelay) -> None:
    client = await relay(gateways={"gw": "http://127.0.0.1:1" + WELL_KNOWN})  # gateways are not its business
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}


async def test_metrics_have_no_per_client_labels(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay(gateways={"gw": gateway.url, "pair": f"{gateway.url},{gateway.url}"},
                         trusted_proxies=("127.0.0.1",), rate_per_minute=1)
    for addr in CLIENTS:  # each its own client, through the trusted proxy
        for path, ctype in (("/gw", MEDIA_REQ), ("/pair", MEDIA_REQ), ("/nope", MEDIA_REQ), ("/gw", "text/plain")):
            await client.post(path, data=b"\x01junk", headers={"Content-Type": ctype, "X-Forwarded-For": addr,
                                                              "User-Agent": "agent-" + addr})
        await client.get("/gw", headers={"X-Forwarded-For": addr})
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert not any(a in text for a in (*CLIENTS, "127.0.0.1", "agent-"))
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for k, v in sample.labels.items():
                labels.setdefault(k, set()).add(v)
    labels.pop("le", None)  # histogram buckets
    assert labels == {
        "outcome": {"ok", "forbidden", "media_type", "rate_limited"},
        "direction": {"up", "down"},
        "gateway": {"pair"},
        "replica": {"0", "1"},
    }


@pytest.mark.parametrize(("overrides", "says"), [
    ({"require_token": "ftp://issuer.example"}, "must be http(s)://"),
    ({"require_token": "issuer.example"}, "must be http(s)://"),
    ({"token_origin": ("relay.example",)}, "--require-token"),
])
def test_config_refuses_bad_token_settings(overrides: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        RelayConfig(gateways={"gw": "http://127.0.0.1:1/"}, **overrides)  # type: ignore[arg-type]


async def test_require_token_refuses_before_forwarding(relay: MakeRelay, gateway: StandInGateway,
                                                       tmp_path: Path) -> None:
    """``require_token`` wires the Privacy Pass check into create_app: a POST without a token is refused with a
    PrivateToken challenge for the issuer (whose directory cannot be fetched here: the challenge names no key yet)
    and never reaches the gateway; GETs (keys, evidence) need no token; the refusal is counted without labels."""
    client = await relay(require_token="http://127.0.0.1:1", spent_store=str(tmp_path / "spent.sqlite"),
                         token_origin=("relay.example",))
    for auth in (None, "Bearer x"):
        resp = await client.post("/gw", data=b"\x01junk", headers={"Content-Type": MEDIA_REQ,
                                                                   **({"Authorization": auth} if auth else {})})
        assert resp.status == 401 and resp.headers["Cache-Control"] == "no-store"
        (ch,) = privacypass.parse_www_authenticate(resp.headers["WWW-Authenticate"])
        assert ch.scheme == "PrivateToken" and "token-key" not in ch.params  # no issuer key known yet
        decoded = privacypass.TokenChallenge.decode(privacypass.b64url_decode(ch.params["challenge"]))
        assert decoded.issuer_name == "127.0.0.1:1" and decoded.origin_info == ("relay.example",)
    assert gateway.posts == []
    assert (await client.get("/gw")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'veil_relay_tokens_rejected_total{reason="missing"} 1.0' in text


def _samples(m: RelayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``m``'s registry but the creation times (which differ between two registries)."""
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for fam in text_string_to_metric_families(generate_latest(m.registry).decode())
            for x in fam.samples if not x.name.endswith("_created")}


def test_batched_metrics_write_exactly_what_direct_updates_do_once_flushed() -> None:
    """With workers the per-request updates are added up in the process and written by flush(): before it the
    registry shows none of them; after it, exactly what the same updates made one by one show."""
    direct, batched = RelayMetrics([], batch=False), RelayMetrics([], batch=True)
    assert batched.batched and not direct.batched

    def updates(m: RelayMetrics) -> None:
        for i, seconds in enumerate((0.0001, 0.0005, 0.003, 0.003, 0.7, 31.0, 1e-9)):
            m.in_flight.inc()
            m.bytes_up.inc(100 + i)
            m.latency.observe(seconds)
            m.bytes_down.inc(1000)
            m.outcome("ok" if i % 3 else "gateway_4xx").inc()
            if i < 5:
                m.in_flight.dec()
        m.retries.inc()

    updates(direct)
    updates(batched)
    assert set(_samples(batched).values()) == {0.0}  # nothing written yet
    batched.flush()
    assert _samples(batched) == _samples(direct)
    assert _samples(direct)[("veil_relay_in_flight", ())] == 2.0
    assert _samples(direct)[("veil_relay_upstream_seconds_bucket", (("le", "0.0005"),))] == 3.0
    batched.flush()  # nothing new: nothing written twice
    assert _samples(batched) == _samples(direct)
    for m in (direct, batched):
        m.in_flight.dec(2)
        m.outcome("ok").inc()
    batched.flush()
    assert _samples(batched) == _samples(direct)
