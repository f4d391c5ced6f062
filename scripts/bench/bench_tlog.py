#!/usr/bin/env python3
"""The transparency log's cost (issue 17), in one run:

* the client's added verification time per fresh key fetch: ``OhttpClient.refresh_keys()`` against a running
  ``veil gateway --engine echo`` (SIMULATED attestation, no TEE), verified with the log (``veil proxy --publisher
  --log --log-key``: checkpoint signature, consistency with the kept checkpoint, entry bundles, inclusion proofs of
  the releases and the key entry, then the evidence) and, alternating in the same loop, the same fetch verified with
  a local policy only (the baseline). The log is served by ``veil log serve`` on loopback and holds ``--entries``
  key entries of other gateways besides the release and this gateway's key, so the client reads a realistic log.
* the log's append throughput (``transparency.log.Log.append``: sequencing, tiles, entry bundles, signed
  checkpoint written to disk), one entry per append and in batches of 256.

A benchmark, not a test: the exit status is 0 unless something raised.

Usage::

    scripts/bench/bench_tlog.py [--iterations N] [--entries N] [--appends N]
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
from pathlib import Path

from _bench_env import prepare

ROOT = prepare(__file__, "aiohttp")

from _common import machine_info, pct  # noqa: E402

import tlog  # noqa: E402
from enclave.attestation import Policy, SimulatedProvider  # noqa: E402
from ohttp import GatewayKey, encode_list  # noqa: E402
from proxy.transport import OhttpClient  # noqa: E402
from proxy.verify import Transparency, make_verifier  # noqa: E402
from tests.harness import free_port, start_veil, stop_all  # noqa: E402
from transparency import release_text, sign_release  # noqa: E402
from transparency.log import Log  # noqa: E402
from transparency.log_cli import key_entry_for_bundle  # noqa: E402

POLICY = {"platforms": ["simulated"], "config": {"require": {"engine": "echo"}}}


def _other_key_entries(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        keys = encode_list([GatewayKey.generate(i % 256).config])
        out.append(key_entry_for_bundle(SimulatedProvider().collect(keys, config={"engine": "echo"}).to_json(),
                                        f"gw-{i}", 30, None))
    return out


async def _fetches(gw_base: str, log_url: str, log: Log, publisher: tlog.Signer, state: Path,
                   iterations: int) -> tuple[list[float], list[float]]:
    keys_url = gw_base + "/.well-known/ohttp-gateway"
    att_url = gw_base + "/.well-known/veil-attestation"
    base = OhttpClient(keys_url, verifier=make_verifier(allow_simulated=True, policy=Policy.from_dict(POLICY)),
                       keys_url=keys_url, attestation_url=att_url)
    logged = OhttpClient(keys_url, verifier=make_verifier(
        allow_simulated=True, transparency=Transparency([publisher.verifier], log_url, log.signer.verifier,
                                                        state_file=state)), keys_url=keys_url, attestation_url=att_url)
    t_base: list[float] = []
    t_log: list[float] = []
    try:
        for i in range(iterations + 3):
            order = [(base, t_base), (logged, t_log)]
            for client, out in order if i % 2 else reversed(order):
                t0 = time.perf_counter()
                await client.refresh_keys()
                if i >= 3:  # warm-up discarded
                    out.append((time.perf_counter() - t0) * 1000)
    finally:
        await base.close()
        await logged.close()
    return t_base, t_log


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
    ap.add_argument("--entries", type=int, default=1000, help="other gateways' key entries in the log (default 1000)")
    ap.add_argument("--appends", type=int, default=2000, help="entries appended for the throughput (default 2000)")
    args = ap.parse_args()
    logging.getLogger("veil.client").setLevel(logging.ERROR)  # the SIMULATED warning, once per fetch
    info = machine_info("aiohttp")
    print(f"machine: {info.get('cpu')} ({info.get('cores')} cores), python {sys.version.split()[0]}")

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        publisher = tlog.generate_signer("releases.veil.example")
        log = Log.init(tmp / "log", "bench.veil.example/log")
        nb = int(time.time()) - 60
        rel = sign_release(release_text("veil bench", nb, nb + 30 * 86400, POLICY), publisher)
        log.append([rel, *_other_key_entries(args.entries)])
        lp, gp = free_port(), free_port()
        procs = []
        try:
            procs.append(start_veil(["log", "serve", "--dir", str(tmp / "log"), "--port", str(lp)], lp,
                                    health="/checkpoint"))
            procs.append(start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gp}"], gp))
            gw = f"http://127.0.0.1:{gp}"
            bundle = urllib.request.urlopen(gw + "/.well-known/veil-attestation", timeout=10).read()
            log.append([key_entry_for_bundle(bundle, "gw-bench", 30, tlog.leaf_hash(rel).hex())])
            t_base, t_log = asyncio.run(_fetches(gw, f"http://127.0.0.1:{lp}", log, publisher,
                                                 tmp / "state.json", args.iterations))
        finally:
            stop_all(procs, remove_logs=True)
        size = log.size()
        log.close()

    mb, ml = statistics.median(t_base), statistics.median(t_log)
    print(f"\nfresh key fetch (keys + evidence over loopback, SIMULATED attestation), log of {size} entries, "
          f"{args.iterations} each, alternating:")
    print(f"  baseline (local policy only): median {mb:8.2f} ms   p90 {pct(t_base, 90):8.2f} ms")
    print(f"  with the log (proofs incl.):  median {ml:8.2f} ms   p90 {pct(t_log, 90):8.2f} ms")
    print(f"  added by the log:             median {ml - mb:8.2f} ms")
    print(f"\nlog append throughput ({args.appends} entries, each append writes tiles and a signed checkpoint):")
    print(f"  one entry per append:   {_appends(args.appends, 1):10.0f} entries/s")
    print(f"  256 entries per append: {_appends(args.appends, 256):10.0f} entries/s")


if __name__ == "__main__":
    main()
