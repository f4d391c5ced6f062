#!/usr/bin/env python3
"""Micro-benchmark of Veil's OHTTP layer (``ohttp/``) against raw pyhpke / AES-GCM baselines.

What it measures, in microseconds per operation (median and p90 over many iterations, ``time.perf_counter_ns``,
warm-up iterations discarded, garbage collector paused while timing):

* a whole exchange with 1 KiB and 64 KiB bodies (request and response content of that size), per step:

  - client: encapsulate request (BHTTP encode + HPKE seal), open response (AEAD open + BHTTP decode);
  - gateway: decapsulate request (HPKE open + BHTTP decode), seal response (BHTTP encode + AEAD seal), and
    "decapsulate + seal-response" (the two timed in the same iteration, summed per iteration);

* a chunked-OHTTP response stream of 500 SSE events of 100 bytes each, per chunk:

  - gateway: ``bhttp.encode_chunk`` + ``ChunkedGatewayResponse.encode_chunk``;
  - client: ``ChunkedClientResponse.receive_data``/``next_event`` + incremental ``BHTTPDecoder``.

Each is measured next to a baseline in the same run and the same iteration (the order alternates between
iterations): raw pyhpke for the same bytes (``CipherSuite.create_sender_context`` + ``seal`` on the client,
``create_recipient_context`` + ``open`` on the gateway, ``export`` + one AES-GCM seal/open with the exported
secret for the response), with the suite and the deserialized keys built once, as Veil caches them; for the
stream, one raw ``AESGCM.encrypt``/``decrypt`` per chunk of the same size.

* post-quantum cost: the same 1 KiB exchange through Veil with an X-Wing key (KEM 0x647A, ML-KEM-768 + X25519)
  and with an X25519 key, alternating in the same iterations: client encapsulate, gateway decapsulate + seal,
  client open, and the bytes on the wire (key configuration, request, response).

Targets checked (from the issue):

* gateway decapsulate + seal-response of a 1 KiB exchange within 1.3x of the raw HPKE baseline;
* per-chunk overhead of a stream (Veil per chunk minus raw AEAD per chunk) under 10 us.

A benchmark, not a test: the exit status is 0 unless something raised.

Usage::

    scripts/bench/bench_ohttp.py [--quick] [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from _bench_env import prepare

ROOT = prepare(__file__, 'pyhpke')

from _common import Target, machine_info as base_machine_info, openssl_version, pct
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyhpke import AEADId, CipherSuite, KDFId, KEMId

from ohttp import (
    NEED_DATA,
    BHTTPDecoder,
    Chunk,
    ChunkedClientRequest,
    ChunkedGatewayRequest,
    ClientRequest,
    Data,
    EndOfMessage,
    Gateway,
    GatewayKey,
    KemId,
    KeyRing,
    Request,
    Response,
    ResponseHead,
    decode_request,
    decode_response,
    encode_chunk,
    encode_end,
    encode_request,
    encode_response,
    encode_response_head,
)

PERF = time.perf_counter_ns
KIB = 1024
SSE_EVENT_SIZE = 100
TARGET_GATEWAY_RATIO = 1.3
TARGET_CHUNK_OVERHEAD_US = 10.0

INFO_REQUEST = b"message/bhttp request"
LABEL_RESPONSE = b"message/bhttp response"
#: max(Nn, Nk) for AES-128-GCM: the length Veil exports for the response secret (RFC 9458 §4.4).
RESPONSE_SECRET_LEN = 16
BASELINE_NONCE = bytes(12)

REQUEST_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "application/json"),
    ("accept", "application/json"),
    ("user-agent", "veil-bench/1"),
)
RESPONSE_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "application/json"),
    ("cache-control", "no-store"),
)
SSE_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
)


# ---------------------------------------------------------------------------------------------------------------
# Workload


def json_body(size: int, prefix: bytes, suffix: bytes) -> bytes:
    """A JSON document of exactly ``size`` bytes: ``prefix`` + filler text + ``suffix``."""
    filler_len = size - len(prefix) - len(suffix)
    if filler_len < 0:
        raise ValueError(f"body of {size} bytes is too small for its JSON frame")
    words = b"lorem ipsum dolor sit amet consectetur adipiscing elit "
    filler = (words * (filler_len // len(words) + 1))[:filler_len]
    return prefix + filler + suffix


def request_body(size: int) -> bytes:
    return json_body(size, b'{"model":"smollm2","messages":[{"role":"user","content":"', b'"}],"stream":false}')


def response_body(size: int) -> bytes:
    return json_body(
        size,
        b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"',
        b'"},"finish_reason":"stop"}]}',
    )


def make_request(body: bytes) -> Request:
    return Request(
        method=b"POST",
        scheme=b"https",
        authority=b"gateway.veil.example",
        path=b"/v1/chat/completions",
        headers=REQUEST_HEADERS,  # type: ignore[arg-type]  # str fields are converted by Request
        content=body,
    )


def make_response(body: bytes) -> Response:
    return Response(status=200, headers=RESPONSE_HEADERS, content=body)  # type: ignore[arg-type]


def sse_events(n: int, size: int = SSE_EVENT_SIZE) -> list[bytes]:
    """``n`` OpenAI-style SSE events of exactly ``size`` bytes each."""
    words = [" word", " the", " model", " says", " hello", " again", " and", " more"]
    out = []
    for i in range(n):
        word = words[i % len(words)]
        head = 'data: {"id":"chatcmpl-'
        tail = f'","choices":[{{"index":0,"delta":{{"content":"{word}"}}}}]}}\n\n'
        pad = size - len(head) - len(tail)
        if pad < 1:
            raise ValueError(f"SSE event of {size} bytes is too small")
        ident = f"{i:0{pad}d}"[-pad:]
        event = (head + ident + tail).encode()
        assert len(event) == size
        out.append(event)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Statistics


@dataclass
class Series:
    """Samples (microseconds) of one operation, Veil and baseline side by side."""

    key: str
    step: str
    size: str
    baseline_desc: str
    veil: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    round_medians: list[tuple[float, float]] = field(default_factory=list)

    def add(self, veil_ns: float, base_ns: float, per: int = 1) -> None:
        self.veil.append(veil_ns / 1000.0 / per)
        self.base.append(base_ns / 1000.0 / per)

    def end_round(self, start: int) -> None:
        self.round_medians.append((statistics.median(self.veil[start:]), statistics.median(self.base[start:])))

    @property
    def veil_median(self) -> float:
        return statistics.median(self.veil)

    @property
    def base_median(self) -> float:
        return statistics.median(self.base)

    @property
    def ratio(self) -> float:
        return self.veil_median / self.base_median

    @property
    def delta(self) -> float:
        return self.veil_median - self.base_median

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "step": self.step,
            "size": self.size,
            "baseline": self.baseline_desc,
            "samples": len(self.veil),
            "veil_median_us": self.veil_median,
            "veil_p90_us": pct(self.veil, 90),
            "baseline_median_us": self.base_median,
            "baseline_p90_us": pct(self.base, 90),
            "ratio": self.ratio,
            "delta_us": self.delta,
            "round_medians_us": [{"veil": v, "baseline": b} for v, b in self.round_medians],
        }


# ---------------------------------------------------------------------------------------------------------------
# Exchange benchmark (RFC 9458 request/response)


@dataclass
class ExchangeSeries:
    client_encap: Series
    client_open: Series
    gateway_decap: Series
    gateway_seal: Series
    gateway_total: Series
    gateway_ohttp: Series

    def all(self) -> list[Series]:
        return [
            self.client_encap,
            self.client_open,
            self.gateway_decap,
            self.gateway_seal,
            self.gateway_total,
            self.gateway_ohttp,
        ]


def new_exchange_series(size_label: str, key: str) -> ExchangeSeries:
    return ExchangeSeries(
        client_encap=Series(
            f"{key}.client_encapsulate",
            "client: encapsulate request (+BHTTP encode)",
            size_label,
            "create_sender_context + seal",
        ),
        client_open=Series(
            f"{key}.client_open",
            "client: open response (+BHTTP decode)",
            size_label,
            "export + AESGCM open",
        ),
        gateway_decap=Series(
            f"{key}.gateway_decapsulate",
            "gateway: decapsulate request (+BHTTP decode)",
            size_label,
            "create_recipient_context + open",
        ),
        gateway_seal=Series(
            f"{key}.gateway_seal",
            "gateway: seal response (+BHTTP encode)",
            size_label,
            "export + AESGCM seal",
        ),
        gateway_total=Series(
            f"{key}.gateway_total",
            "**gateway: decapsulate + seal-response**",
            size_label,
            "recipient setup + open + export + seal",
        ),
        gateway_ohttp=Series(
            f"{key}.gateway_total_ohttp_only",
            "gateway: decapsulate + seal-response, OHTTP only (no BHTTP)",
            size_label,
            "recipient setup + open + export + seal",
        ),
    )


class ExchangeBench:
    """One gateway key, one client, the same BHTTP bytes for Veil and the raw baseline."""

    def __init__(self, body_size: int) -> None:
        self.key = GatewayKey.generate(1)
        self.gateway = Gateway(KeyRing([self.key]))
        self.client = ClientRequest(self.key.config)
        self.req_body = request_body(body_size)
        self.resp_body = response_body(body_size)
        # The baseline seals exactly the bytes Veil seals.
        self.req_bhttp = encode_request(make_request(self.req_body))
        self.resp_bhttp = encode_response(make_response(self.resp_body))
        # Baseline: suite and deserialized keys built once.
        self.suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES128_GCM)
        self.pkr = self.suite.kem.deserialize_public_key(self.key.config.public_key)
        self.skr = self.suite.kem.deserialize_private_key(self.key.private_key.private_bytes())
        self.info = INFO_REQUEST + b"\x00" + self.client.header()

    def iteration(self, s: ExchangeSeries | None, baseline_first: bool) -> None:
        if baseline_first:
            b = self._baseline()
            v = self._veil()
        else:
            v = self._veil()
            b = self._baseline()
        if s is not None:
            s.client_encap.add(v[0], b[0])
            s.client_open.add(v[1], b[1])
            s.gateway_decap.add(v[2], b[2])
            s.gateway_seal.add(v[3], b[3])
            s.gateway_total.add(v[2] + v[3], b[2] + b[3])
            s.gateway_ohttp.add(v[4], b[2] + b[3])

    def _veil(self) -> tuple[int, int, int, int, int]:
        """Client encapsulate, client open, gateway decapsulate, gateway seal, gateway OHTTP-only (ns)."""
        req_body, resp_body = self.req_body, self.resp_body

        t0 = PERF()
        enc_request, client_ctx = self.client.encapsulate(encode_request(make_request(req_body)))
        t1 = PERF()
        bhttp_request, gateway_ctx = self.gateway.decapsulate(enc_request)
        t1b = PERF()
        request = decode_request(bhttp_request)
        t2 = PERF()
        bhttp_response = encode_response(make_response(resp_body))
        t2b = PERF()
        enc_response = gateway_ctx.encapsulate(bhttp_response)
        t3 = PERF()
        response = decode_response(client_ctx.decapsulate(enc_response))
        t4 = PERF()

        if request.content != req_body or response.content != resp_body:
            raise AssertionError("Veil round trip lost data")
        return t1 - t0, t4 - t3, t2 - t1, t3 - t2, (t1b - t1) + (t3 - t2b)

    def _baseline(self) -> tuple[int, int, int, int]:
        suite, info = self.suite, self.info

        t0 = PERF()
        enc, sender = suite.create_sender_context(self.pkr, info)
        ct = sender.seal(self.req_bhttp)
        t1 = PERF()
        recipient = suite.create_recipient_context(enc, self.skr, info)
        pt = recipient.open(ct)
        t2 = PERF()
        ct_resp = AESGCM(recipient.export(LABEL_RESPONSE, RESPONSE_SECRET_LEN)).encrypt(
            BASELINE_NONCE, self.resp_bhttp, None
        )
        t3 = PERF()
        pt_resp = AESGCM(sender.export(LABEL_RESPONSE, RESPONSE_SECRET_LEN)).decrypt(BASELINE_NONCE, ct_resp, None)
        t4 = PERF()

        if pt != self.req_bhttp or pt_resp != self.resp_bhttp:
            raise AssertionError("baseline round trip lost data")
        return t1 - t0, t4 - t3, t2 - t1, t3 - t2


def timed_rounds(iteration: Callable[[Any, bool], None], s: ExchangeSeries | KemSeries, iterations: int, warmup: int,
                 repeat: int) -> None:
    """``warmup`` untimed iterations, then ``repeat`` rounds of ``iterations`` with the garbage collector paused, each
    round's medians recorded; Veil and the baseline take turns going first (``bool(i & 1)``)."""
    for i in range(warmup):
        iteration(None, bool(i & 1))
    for _ in range(repeat):
        start = len(s.gateway_total.veil)
        gc.collect()
        gc.disable()
        try:
            for i in range(iterations):
                iteration(s, bool(i & 1))
        finally:
            gc.enable()
        for series in s.all():
            series.end_round(start)


def run_exchange(body_size: int, iterations: int, warmup: int, repeat: int, s: ExchangeSeries) -> None:
    timed_rounds(ExchangeBench(body_size).iteration, s, iterations, warmup, repeat)


# ---------------------------------------------------------------------------------------------------------------
# Stream benchmark (chunked OHTTP response carrying SSE)


class StreamBench:
    """A chunked response of ``n`` SSE events; per stream, Veil and raw AES-GCM over chunks of the same size."""

    def __init__(self, n_chunks: int) -> None:
        self.key = GatewayKey.generate(1)
        self.ring = KeyRing([self.key])
        self.events = sse_events(n_chunks)
        self.request_bhttp = encode_request(make_request(request_body(KIB)))
        # Baseline: one AES-128-GCM key; plaintexts as long as the BHTTP chunks Veil seals (varint + event).
        self.aes = AESGCM(AESGCM.generate_key(128))
        self.base_pts = [os.urandom(len(encode_chunk(e))) for e in self.events]
        self.base_nonces = [i.to_bytes(12, "big") for i in range(n_chunks)]
        self.base_cts = [self.aes.encrypt(n, p, None) for n, p in zip(self.base_nonces, self.base_pts)]

    def iteration(self, gw: Series | None, cl: Series | None, baseline_first: bool) -> None:
        n = len(self.events)
        if baseline_first:
            bg, bc = self._baseline()
            vg, vc = self._veil()
        else:
            vg, vc = self._veil()
            bg, bc = self._baseline()
        if gw is not None and cl is not None:
            gw.add(vg, bg, n)
            cl.add(vc, bc, n)

    def _veil(self) -> tuple[int, int]:
        # Untimed: the request, the gateway's response context, the response head.
        client = ChunkedClientRequest(self.key.config)
        wire_request = client.encode_chunk(self.request_bhttp, final=True)
        gateway = ChunkedGatewayRequest(self.ring)
        gateway.receive_data(wire_request)
        gateway.receive_data(b"")
        while True:
            ev = gateway.next_event()
            if isinstance(ev, Chunk) and ev.final:
                break
        gw_resp = gateway.response()
        head_wire = gw_resp.encode_chunk(encode_response_head(200, SSE_HEADERS))

        events = self.events
        wires: list[bytes] = []
        append = wires.append
        t0 = PERF()
        for event in events:
            append(gw_resp.encode_chunk(encode_chunk(event)))
        t1 = PERF()
        final_wire = gw_resp.encode_chunk(encode_end(), final=True)

        # Client, untimed: the response head.
        cl_resp = client.response()
        decoder = BHTTPDecoder(expect="response")
        cl_resp.receive_data(head_wire)
        first = cl_resp.next_event()
        assert isinstance(first, Chunk)
        decoder.receive_data(first.data)
        if not isinstance(decoder.next_event(), ResponseHead) or decoder.next_event() is not NEED_DATA:
            raise AssertionError("response head not decoded")

        out: list[bytes] = []
        out_append = out.append
        t2 = PERF()
        for wire in wires:
            cl_resp.receive_data(wire)
            while True:
                chunk = cl_resp.next_event()
                if not isinstance(chunk, Chunk):  # chunked NEED_DATA
                    break
                decoder.receive_data(chunk.data)
                while True:
                    bev = decoder.next_event()
                    if not isinstance(bev, Data):  # NEED_DATA: a content chunk yields one Data event
                        break
                    out_append(bev.data)
        t3 = PERF()

        # Untimed: the final chunk, and a check that every byte arrived.
        cl_resp.receive_data(final_wire)
        cl_resp.receive_data(b"")
        last = cl_resp.next_event()
        assert isinstance(last, Chunk) and last.final
        decoder.receive_data(last.data)
        decoder.receive_data(b"")
        bev = decoder.next_event()
        while isinstance(bev, Data):
            out_append(bev.data)
            bev = decoder.next_event()
        if not isinstance(bev, EndOfMessage) or b"".join(out) != b"".join(events):
            raise AssertionError("Veil stream lost data")
        return t1 - t0, t3 - t2

    def _baseline(self) -> tuple[int, int]:
        encrypt, decrypt = self.aes.encrypt, self.aes.decrypt
        nonces, pts, cts = self.base_nonces, self.base_pts, self.base_cts
        out: list[bytes] = []
        append = out.append
        t0 = PERF()
        for nonce, pt in zip(nonces, pts):
            append(encrypt(nonce, pt, None))
        t1 = PERF()
        for nonce, ct in zip(nonces, cts):
            append(decrypt(nonce, ct, None))
        t2 = PERF()
        return t1 - t0, t2 - t1


def run_stream(n_chunks: int, streams: int, warmup: int, repeat: int, gw: Series, cl: Series) -> None:
    bench = StreamBench(n_chunks)
    for i in range(warmup):
        bench.iteration(None, None, bool(i & 1))
    for _ in range(repeat):
        start = len(gw.veil)
        gc.collect()
        gc.disable()
        try:
            for i in range(streams):
                bench.iteration(gw, cl, bool(i & 1))
        finally:
            gc.enable()
        gw.end_round(start)
        cl.end_round(start)


# ---------------------------------------------------------------------------------------------------------------
# Machine and report


# ---------------------------------------------------------------------------------------------------------------
# Post-quantum cost: X-Wing against X25519, both through Veil


@dataclass
class KemSeries:
    client_encap: Series
    gateway_total: Series
    gateway_decap: Series
    client_open: Series

    def all(self) -> list[Series]:
        return [self.client_encap, self.gateway_total, self.gateway_decap, self.client_open]


def new_kem_series(size_label: str) -> KemSeries:
    def series(key: str, step: str) -> Series:
        return Series(f"xwing_1k.{key}", step, size_label, "X25519 (same run)")

    return KemSeries(
        client_encap=series("client_encapsulate", "client: encapsulate request (+BHTTP encode)"),
        gateway_total=series("gateway_total", "**gateway: decapsulate + seal-response**"),
        gateway_decap=series("gateway_decapsulate", "gateway: decapsulate request (+BHTTP decode)"),
        client_open=series("client_open", "client: open response (+BHTTP decode)"),
    )


class KemBench:
    """One 1 KiB exchange through Veil per KEM; ``veil`` samples are X-Wing, ``base`` samples X25519."""

    def __init__(self, body_size: int) -> None:
        self.req_body = request_body(body_size)
        self.resp_body = response_body(body_size)
        self.sides: dict[KemId, tuple[GatewayKey, Gateway, ClientRequest]] = {}
        for kem in (KemId.XWING, KemId.X25519_SHA256):
            key = GatewayKey.generate(1, kem)
            self.sides[kem] = (key, Gateway(KeyRing([key])), ClientRequest(key.config))
        self.sizes: dict[KemId, dict[str, int]] = {}

    def iteration(self, s: KemSeries | None, x25519_first: bool) -> None:
        order = (KemId.X25519_SHA256, KemId.XWING) if x25519_first else (KemId.XWING, KemId.X25519_SHA256)
        t = {kem: self._one(kem) for kem in order}
        if s is not None:
            pq, classic = t[KemId.XWING], t[KemId.X25519_SHA256]
            s.client_encap.add(pq[0], classic[0])
            s.gateway_decap.add(pq[1], classic[1])
            s.gateway_total.add(pq[1] + pq[2], classic[1] + classic[2])
            s.client_open.add(pq[3], classic[3])

    def _one(self, kem: KemId) -> tuple[int, int, int, int]:
        key, gateway, client = self.sides[kem]
        t0 = PERF()
        enc_request, client_ctx = client.encapsulate(encode_request(make_request(self.req_body)))
        t1 = PERF()
        bhttp_request, gateway_ctx = gateway.decapsulate(enc_request)
        request = decode_request(bhttp_request)
        t2 = PERF()
        enc_response = gateway_ctx.encapsulate(encode_response(make_response(self.resp_body)))
        t3 = PERF()
        response = decode_response(client_ctx.decapsulate(enc_response))
        t4 = PERF()
        if request.content != self.req_body or response.content != self.resp_body:
            raise AssertionError("Veil round trip lost data")
        self.sizes[kem] = {
            "key_config_list": len(key.config.encode()) + 2,
            "request": len(enc_request),
            "response": len(enc_response),
        }
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def run_kem(body_size: int, iterations: int, warmup: int, repeat: int, s: KemSeries) -> KemBench:
    bench = KemBench(body_size)
    timed_rounds(bench.iteration, s, iterations, warmup, repeat)
    return bench


def kem_table(rows: list[Series], sizes: dict[KemId, dict[str, int]]) -> str:
    lines = [
        "| Step (1 KiB exchange) | X-Wing median (µs) | X-Wing p90 (µs) | X25519 median (µs) | X25519 p90 (µs) "
        "| X-Wing − X25519 (µs) | X-Wing / X25519 |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.step} | {fmt(r.veil_median)} | {fmt(pct(r.veil, 90))} | {fmt(r.base_median)} "
            f"| {fmt(pct(r.base, 90))} | {fmt(r.delta)} | {r.ratio:.2f}x |"
        )
    pq, classic = sizes[KemId.XWING], sizes[KemId.X25519_SHA256]
    lines += [
        "",
        "| Bytes on the wire | X-Wing | X25519 | X-Wing − X25519 |",
        "|---|--:|--:|--:|",
    ]
    for name, label in (
        ("key_config_list", "key configuration (application/ohttp-keys entry, 2 suites)"),
        ("request", "encapsulated request (1 KiB body)"),
        ("response", "encapsulated response (1 KiB body)"),
    ):
        lines.append(f"| {label} | {pq[name]} | {classic[name]} | {pq[name] - classic[name]:+d} |")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    return {**base_machine_info("pyhpke", "cryptography"), "openssl": openssl_version()}


def fmt(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def markdown_table(rows: list[Series]) -> str:
    lines = [
        (
            "| Step | Size | Veil median (µs) | Veil p90 (µs) | Baseline | Baseline median (µs) | Baseline p90 (µs) "
            "| Veil − baseline (µs) | Veil / baseline |"
        ),
        "|---|---|--:|--:|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.step} | {r.size} | {fmt(r.veil_median)} | {fmt(pct(r.veil, 90))} | {r.baseline_desc} "
            f"| {fmt(r.base_median)} | {fmt(pct(r.base, 90))} | {fmt(r.delta)} | {r.ratio:.2f}x |"
        )
    return "\n".join(lines)


def check_targets(gateway_total_1k: Series, chunk_gw: Series, chunk_cl: Series) -> list[Target]:
    """The issue's targets; the gateway one is checked on the BHTTP-inclusive sum, as Veil serves it."""
    r = gateway_total_1k
    targets = [
        Target(
            f"gateway decapsulate + seal-response, 1 KiB, within {TARGET_GATEWAY_RATIO}x of raw HPKE",
            r.ratio <= TARGET_GATEWAY_RATIO,
            f"{fmt(r.veil_median)} µs vs {fmt(r.base_median)} µs = {r.ratio:.2f}x",
        )
    ]
    for side, s in (("gateway", chunk_gw), ("client", chunk_cl)):
        targets.append(
            Target(
                f"{side} per-chunk overhead of a stream under {TARGET_CHUNK_OVERHEAD_US:g} µs",
                s.delta < TARGET_CHUNK_OVERHEAD_US,
                f"{fmt(s.veil_median)} µs − {fmt(s.base_median)} µs raw AEAD = {fmt(s.delta)} µs",
            )
        )
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run, noisier numbers)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the results as JSON to PATH")
    parser.add_argument(
        "--repeat", metavar="N", type=int, default=1, help="run every measurement N times; samples are pooled"
    )
    parser.add_argument("--chunks", type=int, default=500, help="SSE events per stream (default 500)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")

    if args.quick:
        plan = {"small": (300, 50), "large": (60, 10), "streams": (20, 4)}
    else:
        plan = {"small": (4000, 300), "large": (600, 50), "streams": (200, 20)}

    info = machine_info()
    print("# Veil OHTTP benchmark", flush=True)
    print()
    print(
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable); {info['python']}; "
        f"pyhpke {info['pyhpke']}; cryptography {info['cryptography']} ({info['openssl']}); {info['platform']}"
    )
    mode = "quick" if args.quick else "full"
    print(
        f"Mode: {mode}, repeat {args.repeat}; suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM; "
        f"iterations: 1 KiB {plan['small'][0]}, 64 KiB {plan['large'][0]}, "
        f"streams {plan['streams'][0]} x {args.chunks} chunks (per round)",
        flush=True,
    )

    t_start = time.perf_counter()
    small = new_exchange_series("1 KiB", "exchange_1k")
    large = new_exchange_series("64 KiB", "exchange_64k")
    stream_label = f"{args.chunks} × {SSE_EVENT_SIZE} B SSE"
    chunk_gw = Series(
        "stream.gateway_per_chunk",
        "gateway: per chunk (BHTTP chunk + seal)",
        stream_label,
        "AESGCM encrypt",
    )
    chunk_cl = Series(
        "stream.client_per_chunk",
        "client: per chunk (open + BHTTP decode)",
        stream_label,
        "AESGCM decrypt",
    )

    print("running 1 KiB exchange ...", file=sys.stderr, flush=True)
    run_exchange(KIB, plan["small"][0], plan["small"][1], args.repeat, small)
    print("running 64 KiB exchange ...", file=sys.stderr, flush=True)
    run_exchange(64 * KIB, plan["large"][0], plan["large"][1], args.repeat, large)
    print("running chunked stream ...", file=sys.stderr, flush=True)
    run_stream(args.chunks, plan["streams"][0], plan["streams"][1], args.repeat, chunk_gw, chunk_cl)
    print("running X-Wing against X25519 ...", file=sys.stderr, flush=True)
    kem = new_kem_series("1 KiB")
    kem_bench = run_kem(KIB, plan["small"][0] // 2, plan["small"][1], args.repeat, kem)
    elapsed = time.perf_counter() - t_start

    rows = small.all() + large.all() + [chunk_gw, chunk_cl]
    print()
    print(markdown_table(rows))
    print()
    print(
        "Medians and p90 over all iterations (per chunk: per stream, total / chunks). Baselines are raw pyhpke "
        "and cryptography for the same bytes, measured in the same iterations; the gateway total is the sum of "
        "its two steps per iteration. Veil's steps include building and encoding/decoding the BHTTP message."
    )
    print()
    targets = check_targets(small.gateway_total, chunk_gw, chunk_cl)
    for t in targets:
        print(t.line())
    o = small.gateway_ohttp
    print(
        f"INFO: gateway decapsulate + seal-response, 1 KiB, OHTTP only (BHTTP excluded): "
        f"{fmt(o.veil_median)} µs vs {fmt(o.base_median)} µs = {o.ratio:.2f}x"
    )
    print()
    print("## Post-quantum cost: X-Wing (KEM 0x647A, ML-KEM-768 + X25519) against X25519, same iterations")
    print()
    print(kem_table(kem.all(), kem_bench.sizes))
    print()
    g = kem.gateway_total
    print(
        f"INFO: X-Wing adds {fmt(g.delta)} µs of gateway work and {fmt(kem.client_encap.delta)} µs of client work "
        f"per request, and {kem_bench.sizes[KemId.XWING]['request'] - kem_bench.sizes[KemId.X25519_SHA256]['request']}"
        " bytes to each request (response sizes are unchanged)"
    )
    print()
    print(f"({elapsed:.1f} s)")

    if args.json is not None:
        doc = {
            "machine": info,
            "mode": mode,
            "repeat": args.repeat,
            "plan": {k: {"iterations": v[0], "warmup": v[1]} for k, v in plan.items()},
            "chunks_per_stream": args.chunks,
            "sse_event_size": SSE_EVENT_SIZE,
            "results": [r.to_json() for r in rows + kem.all()],
            "bytes": {k.name: v for k, v in kem_bench.sizes.items()},
            "targets": [{"name": t.name, "pass": t.passed, "detail": t.detail} for t in targets],
            "elapsed_s": elapsed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
