"""The whole chain with a transparency log (issue 17), real processes on loopback: a publisher signs a release,
``veil log`` sequences it with the gateway's key entry and ``veil log serve`` serves the tiles; ``veil proxy
--publisher --log --log-key`` derives its policy from the log and the OpenAI SDK chats through relay and gateway.
A second gateway whose key configuration is not in the log (what a relay handing one user a different, attested key
looks like: a split view) is refused, and nothing reaches it.

SIMULATED attestation throughout (``veil gateway --engine echo``, ``--insecure-allow-simulated``): no TEE here."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import openai

from tests.harness import free_port, start_veil, stop_all
from tests.transparency._chain import gateway_requests, refused_chat, release_and_log, veil


def test_publisher_flow_through_the_chain_and_an_unlogged_gateway_is_refused(tmp_path: Path) -> None:
    pub_vkey, log_vkey = release_and_log(tmp_path, "veil 1.0")
    log_dir = tmp_path / "log"

    lp, ga, gb, rp, pa, pb = (free_port() for _ in range(6))
    procs = []
    try:
        procs.append(start_veil(["log", "serve", "--dir", str(log_dir), "--port", str(lp)], lp, health="/checkpoint"))
        procs.append(start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{ga}"], ga))
        procs.append(start_veil(["gateway", "--engine", "echo", "--listen", f"127.0.0.1:{gb}"], gb))
        procs.append(start_veil(["relay", "--listen", f"127.0.0.1:{rp}",
                                 "--gateway", f"gw=http://127.0.0.1:{ga}/.well-known/ohttp-gateway",
                                 "--gateway", f"other=http://127.0.0.1:{gb}/.well-known/ohttp-gateway"], rp))
        # the operator logs the release and gateway A's key configuration (from the evidence it serves)
        bundle = urllib.request.urlopen(f"http://127.0.0.1:{rp}/gw/attestation", timeout=10).read()
        (tmp_path / "gw.json").write_bytes(bundle)
        veil("log", "append", "--dir", str(log_dir), str(tmp_path / "rel.note"), "--evidence",
             str(tmp_path / "gw.json"), "--gateway", "gw-1")

        trust = ["--publisher", pub_vkey, "--log", f"http://127.0.0.1:{lp}", "--log-key", log_vkey,
                 "--insecure-allow-simulated"]
        proxy_a = start_veil(["proxy", "--listen", f"127.0.0.1:{pa}", "--relay", f"http://127.0.0.1:{rp}/gw",
                              "--log-state", str(tmp_path / "a.json"), *trust], pa)
        procs.append(proxy_a)
        client = openai.OpenAI(base_url=proxy_a.base + "/v1", api_key="unused", max_retries=0)
        r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "logged"}])
        assert r.choices[0].message.content == "logged"
        doc = urllib.request.urlopen(proxy_a.base + "/v1/veil/attestation", timeout=5).read().decode()
        assert "logged: release 'veil 1.0', key configuration at index 1 of 2" in doc

        # gateway B's key configuration is not in the log: refused, and nothing is sent to it
        proxy_b = start_veil(["proxy", "--listen", f"127.0.0.1:{pb}", "--relay", f"http://127.0.0.1:{rp}/other",
                              "--log-state", str(tmp_path / "b.json"), *trust], pb, health="/veil-config.json")
        procs.append(proxy_b)
        before = gateway_requests(f"http://127.0.0.1:{gb}")
        err = refused_chat(proxy_b.base, "split view")
        assert err.status_code == 502
        assert "refused by the transparency log (not in the log)" in str(err)
        assert "split view" in str(err)
        assert gateway_requests(f"http://127.0.0.1:{gb}") == before == 0
        assert gateway_requests(f"http://127.0.0.1:{ga}") >= 1  # the count does move for the logged gateway
    finally:
        stop_all(procs, remove_logs=True)
