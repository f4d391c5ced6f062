"""CORS (cors.py): preflights and every kind of answer let exactly the configured origins read them."""

from __future__ import annotations

from pathlib import Path

from .conftest import MEDIA_REQ, MakeRelay, StandInGateway

PAGE = "https://chat.example"


async def test_preflight_for_an_allowed_origin(relay: MakeRelay) -> None:
    client = await relay(cors_origins=(PAGE,))
    resp = await client.options("/gw", headers={"Origin": PAGE, "Access-Control-Request-Method": "POST"})
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert resp.headers["Vary"] == "Origin"
    assert resp.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert resp.headers["Access-Control-Allow-Headers"] == "Content-Type, Incremental, Accept, Authorization"
    assert resp.headers["Access-Control-Max-Age"] == "600"


async def test_preflight_for_another_origin_allows_nothing(relay: MakeRelay) -> None:
    for origins in ((), (PAGE,)):
        client = await relay(cors_origins=origins)
        resp = await client.options("/gw", headers={"Origin": "https://evil.example"})
        assert resp.status == 204
        assert not any(h.startswith("Access-Control-") for h in resp.headers)


async def test_wildcard_allows_every_origin_without_vary(relay: MakeRelay) -> None:
    client = await relay(cors_origins=("*",))
    resp = await client.options("/anything", headers={"Origin": "https://any.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in resp.headers


async def test_every_kind_of_answer_carries_cors(relay: MakeRelay, gateway: StandInGateway) -> None:
    client = await relay(cors_origins=(PAGE,))
    origin = {"Origin": PAGE}
    answers = [
        await client.get("/gw", headers=origin),  # cached keys
        await client.get("/gw/attestation", headers=origin),  # cached evidence
        await client.get("/nope", headers=origin),  # 404
        await client.post("/gw", data=b"\x01", headers={"Content-Type": MEDIA_REQ, **origin}),  # forwarded
        await client.post("/nope", data=b"\x01", headers={"Content-Type": MEDIA_REQ, **origin}),  # 403
        await client.post("/gw/more", data=b"\x01", headers={"Content-Type": MEDIA_REQ, **origin}),  # 403 (two
        await client.post("/a/b/c", data=b"\x01", headers={"Content-Type": MEDIA_REQ, **origin}),  # segments, three)
        await client.post("/gw", data=b"\x01", headers={"Content-Type": "text/plain", **origin}),  # 415
    ]
    assert [r.status for r in answers] == [200, 200, 404, 200, 403, 403, 403, 415]
    assert all(r.headers["Access-Control-Allow-Origin"] == PAGE for r in answers)
    for path in ("/gw", "/a/b"):
        resp = await client.post(path, data=b"\x01", headers={"Content-Type": MEDIA_REQ,
                                                               "Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.get("/gw", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_token_refusals_carry_cors_and_expose_the_challenge(relay: MakeRelay, gateway: StandInGateway,
                                                                   tmp_path: Path) -> None:
    """A page talking to a relay that requires tokens can read the 401 and its WWW-Authenticate challenge."""
    client = await relay(cors_origins=(PAGE,), require_token="http://127.0.0.1:1",
                         spent_store=str(tmp_path / "spent.sqlite"))
    resp = await client.post("/gw", data=b"x", headers={"Origin": PAGE, "Content-Type": MEDIA_REQ})
    assert resp.status == 401
    assert resp.headers["Access-Control-Allow-Origin"] == PAGE
    assert resp.headers["Access-Control-Expose-Headers"] == "WWW-Authenticate"
    other = await client.post("/gw", data=b"x", headers={"Origin": "https://evil.example", "Content-Type": MEDIA_REQ})
    assert other.status == 401 and not any(h.startswith("Access-Control-") for h in other.headers)
