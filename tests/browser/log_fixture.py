"""A real transparency log for the page's tests, written with the Python side (``transparency.log.Log``, ``tlog``).

``python -m tests.browser.log_fixture`` writes ``proxy/web/test/log-fixture.json`` (committed; the node tests read
it with a fixed ``now``, so it never expires): a simulated gateway's bundle and keys, a log holding releases (one that
admits the gateway, one for SEV-SNP only, one signed by another publisher) and two key entries, checkpoints at size
5 and 300 (cosigned by a witness), the tiles a consistency proof from 5 to 300 needs, a forked checkpoint of size 5,
and the bundle with ``certs["veil_log"]`` attached under each checkpoint: the wire format the gateway attaches
(checkpoint text, key entry and release entries, each with its RFC 6962 inclusion proof).

``attach`` is also what the browser test uses to build a bundle's attachment from a live log.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

import tlog
from transparency.log import Log
from transparency.statements import KeyEntry, key_entry_bytes, release_text, sign_release

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "proxy" / "web" / "test" / "log-fixture.json"
ORIGIN = "log.veil.example/test"
#: The node tests' clock: inside every window below.
NOW = 1_900_000_000
DAY = 86400
POLICY_OK: dict[str, Any] = {"platforms": ["simulated"], "config": {"require": {"engine": "echo"}}}
POLICY_SEV: dict[str, Any] = {"platforms": ["sev-snp"], "sev-snp": {"measurements": ["00" * 48]}}


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def key_entry(bundle_json: bytes, gateway: str, not_before: int, not_after: int, release: bytes | None) -> bytes:
    """The key entry for a bundle's key configuration (as ``veil log append --evidence`` writes, explicit window)."""
    from enclave.attestation import Bundle
    from ohttp import decode_list

    bundle = Bundle.from_json(bundle_json)
    return key_entry_bytes(KeyEntry(gateway, tuple(c.key_id for c in decode_list(bundle.key_config)),
                                    hashlib.sha256(bundle.key_config).hexdigest(),
                                    hashlib.sha256(bundle_json).hexdigest(), not_before, not_after,
                                    tlog.leaf_hash(release).hex() if release is not None else None))


def attach(bundle_json: bytes, checkpoint: bytes, hashes: Sequence[bytes], entries: Sequence[bytes], key_index: int,
           release_indices: Sequence[int]) -> bytes:
    """``bundle_json`` with ``certs["veil_log"]``: the checkpoint and inclusion proofs under its size (``hashes``:
    the log's leaf hashes up to that size; ``entries``: the entries by index)."""
    size = len(hashes)

    def item(i: int) -> dict[str, Any]:
        return {"index": i, "entry": _b64(entries[i]),
                "proof": [_b64(p) for p in tlog.inclusion_proof(list(hashes[:size]), i)]}

    doc = {"checkpoint": checkpoint.decode(), "key": item(key_index), "releases": [item(i) for i in release_indices]}
    bundle = json.loads(bundle_json)
    bundle.setdefault("certs", {})["veil_log"] = json.dumps(doc, separators=(",", ":"))
    return json.dumps(bundle, separators=(",", ":")).encode()


def simulated_gateway(key_id: int = 7) -> tuple[bytes, bytes]:
    """(keys body, bundle JSON) of a simulated gateway with an X-Wing and an X25519 key, config engine=echo."""
    from enclave.attestation import SimulatedProvider
    from ohttp import GatewayKey, KemId, encode_list

    keys = encode_list([GatewayKey.generate(key_id, kem=KemId.XWING).config, GatewayKey.generate(key_id + 1).config])
    return keys, SimulatedProvider().collect(keys, config={"engine": "echo"}).to_json()


def build(directory: Path) -> dict[str, Any]:
    publisher = tlog.generate_signer("releases.veil.example")
    other = tlog.generate_signer("releases.veil.example")
    witness = tlog.generate_signer("witness.veil.example")
    witness2 = tlog.generate_signer("witness2.veil.example")
    log = Log.init(directory / "log", ORIGIN)
    keys, bundle = simulated_gateway()
    keys2, bundle2 = simulated_gateway(20)
    nb = NOW - 10 * DAY
    rel_ok = sign_release(release_text("veil-gateway 1.0", nb, nb + 90 * DAY, POLICY_OK), publisher)
    rel_sev = sign_release(release_text("veil-gateway sev", nb, nb + 90 * DAY, POLICY_SEV), publisher)
    rel_other = sign_release(release_text("not ours", nb, nb + 90 * DAY, POLICY_OK), other)
    entries = [rel_ok, rel_sev, rel_other, key_entry(bundle, "gw-1", nb, nb + 30 * DAY, rel_ok),
               key_entry(bundle2, "gw-2", nb, nb + 30 * DAY, rel_ok)]
    log.append(entries)
    cp_small = (log.public / "checkpoint").read_bytes()
    hashes_small = log.leaf_hashes()
    filler = [key_entry(bundle2, f"gw-filler-{i}", nb, nb + 30 * DAY, None) for i in range(295)]
    log.append(filler[:200])
    log.append(filler[200:])
    entries += filler
    hashes = log.leaf_hashes()
    assert len(hashes) == 300
    plain = (log.public / "checkpoint").read_bytes()
    note = tlog.parse_note(plain)
    cosig = tlog.cosign(note.text, witness, NOW - 60)
    cp_large = tlog.Note(note.text, note.signatures + (cosig,)).serialize()
    tlog.open_checkpoint(cp_large, log.signer.verifier,
                         witnesses=[tlog.Verifier.from_public_key(witness.name, witness.verifier.public_key,
                                                                  tlog.ALG_COSIGNATURE_V1)], min_witnesses=1)
    fork = tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, 5, hashlib.sha256(b"another tree").digest()), log.signer)
    impostor = tlog.sign_checkpoint(tlog.Checkpoint(ORIGIN, 5, tlog.root_from_leaf_hashes(hashes_small)),
                                    tlog.generate_signer(ORIGIN))
    tiles = {t.path(): _b64((log.public / t.path()).read_bytes()) for t in tlog.consistency_tiles(5, 300)}

    def cosigner_vkey(s: tlog.Signer) -> str:
        return tlog.Verifier.from_public_key(s.name, s.verifier.public_key, tlog.ALG_COSIGNATURE_V1).vkey()

    return {
        "note": "written by python -m tests.browser.log_fixture; the node tests use now = NOW",
        "now": NOW, "origin": ORIGIN,
        "publisher": publisher.verifier.vkey(), "other_publisher": other.verifier.vkey(), "log_key": log.vkey,
        "witness": cosigner_vkey(witness), "witness2": cosigner_vkey(witness2),
        "keys": _b64(keys), "bundle": _b64(bundle), "keys2": _b64(keys2),
        "release_window": [nb, nb + 90 * DAY], "key_window": [nb, nb + 30 * DAY],
        "checkpoint_small": cp_small.decode(), "checkpoint_large": cp_large.decode(), "checkpoint_fork": fork.decode(),
        "checkpoint_impostor": impostor.decode(),
        "root_small": _b64(tlog.root_from_leaf_hashes(hashes_small)), "root_large": _b64(tlog.root_from_leaf_hashes(hashes)),
        "tiles": tiles,
        # under size 5 and 300: the gateway's key entry (3), the releases 0 (admits), 1 (SEV only), 2 (other key)
        "bundle_small": _b64(attach(bundle, cp_small, hashes_small, entries, 3, [0, 1, 2])),
        "bundle_large": _b64(attach(bundle, cp_large, hashes, entries, 3, [0, 1, 2])),
        # the other gateway's key entry (4) attached to this gateway's bundle: its key is not the one logged
        "bundle_wrong_key": _b64(attach(bundle, cp_small, hashes_small, entries, 4, [0])),
        # only the SEV-SNP release: none admits a simulated gateway
        "bundle_sev_only": _b64(attach(bundle, cp_small, hashes_small, entries, 3, [1])),
        # only the other publisher's release
        "bundle_other_publisher": _b64(attach(bundle, cp_small, hashes_small, entries, 3, [2])),
    }


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        doc = build(Path(d))
    OUT.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
