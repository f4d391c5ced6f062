#!/usr/bin/env python3
"""The transparency log's cost (issue 17), in one run:

* the client's added verification time per fresh key fetch: ``OhttpClient.refresh_keys()`` against a running
  ``veil gateway --engine echo --transparency-log URL`` (SIMULATED attestation, no TEE), whose bundle carries the
  proofs of its key entry and release, fetched by three clients alternating in one loop: a local policy only (the
  baseline); the log read whole (``veil proxy --publisher --log --log-key`` on the same bundle minus its proofs, as
  for a gateway without ``--transparency-log``: checkpoint, consistency, every entry bundle, inclusion proofs); and
  the gateway's proofs (checkpoint signature and inclusion proofs offline, the state file already at that
  checkpoint). The log, served by ``veil log serve`` on loopback, holds ``--entries`` key entries of other gateways
  besides the release and this gateway's key; one run per log size.
* the log's append throughput (``transparency.log.Log.append``: sequencing, tiles, entry bundles, signed
  checkpoint written to disk), one entry per append and in batches of 256.

A benchmark, not a test: the exit status is 0 unless something raised.

Usage::

    scripts/bench/bench_tlog.py [--iterations N] [--entries N [N ...]] [--appends N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from _bench_env import prepare

ROOT = prepare(__file__, "aiohttp")

from _common import machine_info, pct  # noqa: E402

import tlog  # noqa: E402
from enclave.attestation import Bundle, Policy, SimulatedProvider  # noqa: E402
from ohttp import GatewayKey, encode_list  # noqa: E402
from proxy.transport import OhttpClient  # noqa: E402
from proxy.verify import Transparency, make_verifier  # noqa: E402
from transparency import CERT_KEY  # noqa: E402
from tests.harness import free_port, start_veil, stop_all  # noqa: E402
from transparency import release_text, sign_release  # noqa: E402
from transparency.log import Log  # noqa: E402
from transparency.log_cli import key_entry_for_bundle  # noqa: E402

Verifier = Callable[[bytes, bytes], tuple[object, bool]]
POLICY = {"platforms": ["simulated"], "config": {"require": {"engine": "echo"}}}


def _other_key_entries(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        keys = encode_list([GatewayKey.generate(i % 256).config])
        out.append(key_entry_for_bundle(SimulatedProvider().collect(keys, config={"engine": "echo"}).to_json(),
                                        f"gw-{i}", 30, None))
    return out


def _without_proofs(verify: Verifier) -> Verifier:
    """``verify`` on the bundle minus the gateway's log proofs: the client reads the whole log, as for a gateway
    without ``--transparency-log`` (the bundle is parsed and re-serialized once more: tens of microseconds)."""

    def strip(bundle_json: bytes, keys: bytes) -> tuple[object, bool]:
        b = Bundle.from_json(bundle_json)
        return verify(replace(b, certs={k: v for k, v in b.certs.items() if k != CERT_KEY}).to_json(), keys)

    strip.blocking = True  # type: ignore[attr-defined]
    return strip


async def _fetches(gw_base: str, log_url: str, log: Log, publisher: tlog.Signer, tmp: Path,
                   iterations: int) -> dict[str, list[float]]:
    """Fresh key fetches from one gateway (its bundle carries the log proofs), alternating three clients: a local
    policy only (the baseline), the log read whole, the gateway's proofs."""
    keys_url = gw_base + "/.well-known/ohttp-gateway"
    att_url = gw_base + "/.well-known/veil-attestation"

    def logged(state: str) -> Verifier:
        return make_verifier(allow_simulated=True, transparency=Transparency(
            [publisher.verifier], log_url, log.signer.verifier, state_file=tmp / state))

    verifiers = {"no log": make_verifier(allow_simulated=True, policy=Policy.from_dict(POLICY)),
                 "full log": _without_proofs(logged("full.json")), "proofs": logged("proofs.json")}
    clients = {k: OhttpClient(keys_url, verifier=v, keys_url=keys_url, attestation_url=att_url)
               for k, v in verifiers.items()}
    times: dict[str, list[float]] = {k: [] for k in clients}
    try:
        for i in range(iterations + 3):
            order = list(clients.items())
            for name, client in order[i % 3:] + order[: i % 3]:  # each kind first in turn
                t0 = time.perf_counter()
                await client.refresh_keys()
                if i >= 3:  # warm-up discarded (the first fetch also keeps the checkpoint)
                    times[name].append((time.perf_counter() - t0) * 1000)
        for name, client in clients.items():  # each client took the path it is named after
            checks = [c.name for c in client.keys.verification.checks]  # type: ignore[union-attr]
            via = any("(proofs from the gateway)" in c for c in checks)
            assert via == (name == "proofs") and any(c.startswith("logged:") for c in checks) == (name != "no log")
    finally:
        for client in clients.values():
            await client.close()
    return times


def _one_size(entries: int, iterations: int) -> tuple[int, dict[str, list[float]]]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        publisher = tlog.generate_signer("releases.veil.example")
        log = Log.init(tmp / "log", "bench.veil.example/log")
        nb = int(time.time()) - 60
        rel = sign_release(release_text("veil bench", nb, nb + 30 * 86400, POLICY), publisher)
        log.append([rel, *_other_key_entries(entries)])
        lp, gp = free_port(), free_port()
        procs = []
        try:
            procs.append(start_veil(["log", "serve", "--dir", str(tmp / "log"), "--port", str(lp)], lp,
                                    health="/checkpoint"))
            log_url = f"http://127.0.0.1:{lp}"
            procs.append(start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}",
                                     "--transparency-log", log_url, "--transparency-refresh", "0.2"], gp))
            gw = f"http://127.0.0.1:{gp}"
            bundle = urllib.request.urlopen(gw + "/.well-known/veil-attestation", timeout=10).read()
            log.append([key_entry_for_bundle(bundle, "gw-bench", 30, tlog.leaf_hash(rel).hex())])
            deadline = time.monotonic() + 60
            while CERT_KEY not in Bundle.from_json(
                    urllib.request.urlopen(gw + "/.well-known/veil-attestation", timeout=10).read()).certs:
                if time.monotonic() > deadline:
                    raise RuntimeError("the gateway never attached its log proofs:\n" + procs[-1].log_tail())
                time.sleep(0.1)
            times = asyncio.run(_fetches(gw, log_url, log, publisher, tmp, iterations))
        finally:
            stop_all(procs, remove_logs=True)
        size = log.size()
        log.close()
    return size, times


def _appends(n: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        log = Log.init(Path(d) / "log", "bench.veil.example/log")
        entries = _other_key_entries(min(n, 256))
        t0 = time.perf_counter()
        done = 0
        while done < n:
            k = min(batch, n - done)
            log.append([entries[(done + j) % len(entries)] + str(done + j).encode() for j in range(k)])
            done += k
        dt = time.perf_counter() - t0
        log.close()
        return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=30, help="fresh key fetches of each kind (default 30)")
    ap.add_argument("--entries", type=int, nargs="+", default=[10, 1000, 10000],
                    help="other gateways' key entries in the log, one run per value (default 10 1000 10000)")
    ap.add_argument("--appends", type=int, default=2000, help="entries appended for the throughput (default 2000)")
    args = ap.parse_args()
    logging.getLogger("veil.client").setLevel(logging.ERROR)  # the SIMULATED warning, once per fetch
    info = machine_info("aiohttp")
    print(f"machine: {info.get('cpu')} ({info.get('cores')} cores), python {sys.version.split()[0]}")
    print(f"\nfresh key fetch (keys + evidence over loopback, SIMULATED attestation), {args.iterations} of each kind "
          "alternating; median ms, and as a ratio to the no-log baseline of the same run:")
    print(f"  {'log size':>8}  {'no log':>8}  {'full log read':>22}  {'proofs in the bundle':>22}")
    for n in args.entries:
        size, t = _one_size(n, args.iterations)
        base = statistics.median(t["no log"])
        cells = []
        for kind in ("full log", "proofs"):
            m = statistics.median(t[kind])
            cells.append(f"{m:7.2f} (+{m - base:6.2f}) {m / base:4.2f}x")
        print(f"  {size:>8}  {base:8.2f}  {cells[0]:>22}  {cells[1]:>22}", flush=True)
    print(f"\nlog append throughput ({args.appends} entries, each append writes tiles and a signed checkpoint):")
    print(f"  one entry per append:   {_appends(args.appends, 1):10.0f} entries/s")
    print(f"  256 entries per append: {_appends(args.appends, 256):10.0f} entries/s")


if __name__ == "__main__":
    main()
