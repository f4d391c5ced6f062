#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris) of every parser that takes bytes from the network.

    .venv/bin/python scripts/tools/fuzz.py TARGET [--seconds 60]      one target, a longer campaign
    .venv/bin/python scripts/tools/fuzz.py all --seconds 20            every target in turn
    .venv/bin/python scripts/tools/fuzz.py --list

The invariant (h11's): any input gives a result or one of the parser's own error types; anything else is a crash,
saved under tests/fuzz_corpus/crashes/ to become a regression test. Inputs that reach new coverage are kept in
tests/fuzz_corpus/<target>/, which the test suite replays on every run (tests/test_fuzz_corpus.py).
Seeds come from Veil's own encoders and, when present, the shared test vectors (read in place, never copied).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
CORPUS = REPO / "tests" / "fuzz_corpus"

import ohttp  # noqa: E402
from ohttp import bhttp  # noqa: E402

_KEY = ohttp.GatewayKey.derive(1, bytes(range(32)))
_RING = ohttp.KeyRing([_KEY])
_GATEWAY = ohttp.Gateway(_RING)


def _keys_list(data: bytes) -> None:
    for config in ohttp.decode_list(data):
        assert ohttp.KeyConfig.decode(config.encode()) == config


def _bhttp_whole(data: bytes) -> None:
    msg = bhttp.decode(data)
    # Anything that decodes re-encodes and decodes to the same message.
    enc = bhttp.encode_request if isinstance(msg, bhttp.Request) else bhttp.encode_response
    assert bhttp.decode(enc(msg)) == msg  # type: ignore[arg-type]


def _bhttp_split(data: bytes) -> None:
    dec = bhttp.BHTTPDecoder()
    step = (data[0] % 7 + 1) if data else 1
    for i in range(0, len(data), step):
        dec.receive_data(data[i : i + step])
        while dec.next_event() is not bhttp.NEED_DATA:
            pass
    dec.receive_data(b"")
    for _ in range(10_000):
        if isinstance(dec.next_event(), bhttp.EndOfMessage):
            break


def _gateway_request(data: bytes) -> None:
    _GATEWAY.decapsulate(data)


def _drain_chunked(dec: ohttp.ChunkedGatewayRequest | ohttp.ChunkedClientResponse, data: bytes) -> None:
    dec.receive_data(data)
    dec.receive_data(b"")
    for _ in range(10_000):
        ev = dec.next_event()
        if ev is ohttp.NEED_DATA or (isinstance(ev, ohttp.Chunk) and ev.final):
            break


def _chunked_request(data: bytes) -> None:
    _drain_chunked(ohttp.ChunkedGatewayRequest(_RING), data)


def _chunked_response(data: bytes) -> None:
    creq = ohttp.ChunkedClientRequest(_KEY.config, ephemeral_key=bytes(range(32)))
    _drain_chunked(creq.response(), data)


def _client_response(data: bytes) -> None:
    _, ctx = ohttp.ClientRequest(_KEY.config).encapsulate(b"\x00", ephemeral_key=bytes(range(32)))
    ctx.decapsulate(data)


def _bundle(data: bytes) -> None:
    from enclave.attestation import Bundle

    Bundle.from_json(data)


def _snp_report(data: bytes) -> None:
    from enclave.attestation.snp import parse_report

    parse_report(data)


def _tdx_quote(data: bytes) -> None:
    from enclave.attestation.tdx import parse_quote

    parse_quote(data)


def _gpu_report(data: bytes) -> None:
    from enclave.attestation.nvidia import parse_gpu_report

    parse_gpu_report(data)


def _allowed() -> dict[str, tuple[type[BaseException], ...]]:
    from enclave.attestation import BundleError
    from enclave.attestation.errors import EvidenceFormatError

    remote = (ohttp.RemoteProtocolError,)
    return {
        "keys_list": remote,
        "bhttp_whole": remote,
        "bhttp_split": remote,
        "gateway_request": remote,
        "chunked_request": remote,
        "chunked_response": remote,
        "client_response": remote,
        "bundle": (BundleError,),
        "snp_report": (EvidenceFormatError,),
        "tdx_quote": (EvidenceFormatError,),
        "gpu_report": (EvidenceFormatError,),
    }


TARGETS: dict[str, Callable[[bytes], None]] = {
    "keys_list": _keys_list,
    "bhttp_whole": _bhttp_whole,
    "bhttp_split": _bhttp_split,
    "gateway_request": _gateway_request,
    "chunked_request": _chunked_request,
    "chunked_response": _chunked_response,
    "client_response": _client_response,
    "bundle": _bundle,
    "snp_report": _snp_report,
    "tdx_quote": _tdx_quote,
    "gpu_report": _gpu_report,
}


def check(target: str, data: bytes) -> None:
    """Run one input; raises AssertionError (with the input's hash) on anything but an allowed error."""
    allowed = _allowed()[target]
    try:
        TARGETS[target](data)
    except allowed:
        pass
    except Exception as exc:
        raise AssertionError(f"{target}: {type(exc).__name__}: {exc} on input sha1 {hashlib.sha1(data).hexdigest()}") from exc


def seeds(target: str) -> list[bytes]:
    """Valid inputs made by Veil's own encoders, plus the shared vectors when they are there."""
    req = bhttp.Request(method="POST", path="/v1/chat/completions", headers=[("content-type", "application/json")],
                        content=b'{"model":"echo"}')
    resp = bhttp.Response(status=200, headers=[("content-type", "text/event-stream")], content=b"data: x\n\n",
                          trailers=[("t", "v")])
    out: list[bytes] = []
    if target == "keys_list":
        out.append(ohttp.encode_list([_KEY.config]))
    elif target.startswith("bhttp"):
        for mode in bhttp.Mode:
            out += [bhttp.encode_request(req, mode), bhttp.encode_response(resp, mode)]
    elif target == "gateway_request":
        out.append(ohttp.ClientRequest(_KEY.config).encapsulate(bhttp.encode_request(req))[0])
    elif target == "chunked_request":
        c = ohttp.ChunkedClientRequest(_KEY.config)
        out.append(c.encode_chunk(bhttp.encode_request(req)) + c.encode_chunk(b"", final=True))
    elif target == "chunked_response":
        creq = ohttp.ChunkedClientRequest(_KEY.config, ephemeral_key=bytes(range(32)))
        wire = creq.encode_chunk(b"x", final=True)
        g = ohttp.ChunkedGatewayRequest(_RING)
        g.receive_data(wire)
        g.receive_data(b"")
        while g.next_event() is not ohttp.NEED_DATA:
            pass
        enc = g.response()
        out.append(enc.encode_chunk(bhttp.encode_response_head(200, [])) + enc.encode_chunk(b"\x00\x00", final=True))
    shared = Path(os.environ.get("VEIL_SHARED_DATA", REPO.parent / "shared" / "data"))
    vec = shared / "vectors" / "rfc9292_examples.json"
    if target.startswith("bhttp") and vec.exists():
        out += [bytes.fromhex(e["hex"]) for e in json.loads(vec.read_text())["examples"]]
    ev = shared / "evidence"
    if target == "snp_report":
        out += [p.read_bytes() for p in sorted(ev.glob("sev-snp/*/report.bin"))]
    if target == "tdx_quote":
        out += [p.read_bytes() for p in sorted(ev.glob("tdx/*/quote.bin"))]
    if target == "gpu_report":
        out += [bytes.fromhex(p.read_text().strip()) for p in sorted(ev.glob("nvidia-gpu/*/attestation_report.hex"))]
    if target == "bundle":
        from enclave.attestation import SimulatedProvider

        out.append(SimulatedProvider().collect(ohttp.encode_list([_KEY.config])).to_json())
    return out


def corpus_inputs(target: str) -> list[bytes]:
    """Inputs kept in the repository's corpus for ``target``."""
    d = CORPUS / target
    return [p.read_bytes() for p in sorted(d.glob("*"))] if d.is_dir() else []


def fuzz(target: str, seconds: int) -> int:
    """Run an atheris campaign in a child process (atheris takes over the process)."""
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for s in seeds(target):
        (d / hashlib.sha1(s).hexdigest()).write_bytes(s)
    crashes = CORPUS / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", target, str(d), f"-max_total_time={seconds}",
           f"-artifact_prefix={crashes}/{target}-", "-max_len=4096", "-rss_limit_mb=2048"]
    print(f"[fuzz] {target}: {seconds} s, corpus {d.relative_to(REPO)}", flush=True)
    return subprocess.call(cmd)


def _child(argv: list[str]) -> None:
    import atheris

    target = argv[0]

    def one(data: bytes) -> None:
        check(target, data)

    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *argv[1:]], one)
    atheris.Fuzz()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", help="a target name, or 'all'")
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--list", action="store_true")
    args = p.parse_args()
    if args.list or not args.target:
        print("\n".join(TARGETS))
        return 0
    names = list(TARGETS) if args.target == "all" else [args.target]
    worst = 0
    for name in names:
        if name not in TARGETS:
            print(f"unknown target {name}; --list shows them", file=sys.stderr)
            return 2
        worst = max(worst, fuzz(name, args.seconds))
    return worst


if __name__ == "__main__":
    sys.exit(main())
