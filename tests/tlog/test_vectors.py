"""Every vector in ``shared/data/vectors/tlog_vectors.json``: RFC 6962 hashes and roots, inclusion and consistency
proofs with transparency-dev/merkle's probes (the must-fail ones included), Go's signed-note cases (malformed notes,
bad keys, a corrupted signature, no known key), sigsum's cosignatures, real Go sumdb and Rekor v2 checkpoints, and
Tessera's tile paths."""

from __future__ import annotations

import base64
from typing import Any

import pytest

import tlog
from tests.helpers import load_vector

V: dict[str, Any] = load_vector("tlog_vectors.json")
M = V["merkle_rfc6962"]
SN = V["signed_note"]
CO = V["cosignature_v1"]
RC = V["real_checkpoints"]
TT = V["tlog_tiles"]

h = bytes.fromhex


def test_hasher_cases() -> None:
    cases = M["hasher_cases"]
    assert tlog.EMPTY_ROOT.hex() == cases[0]["root"]
    assert tlog.leaf_hash(h(cases[1]["leaf_input"])).hex() == cases[1]["leaf_hash"]
    assert tlog.leaf_hash(h(cases[2]["leaf_input"])).hex() == cases[2]["leaf_hash"]
    assert tlog.node_hash(h(cases[3]["left"]), h(cases[3]["right"])).hex() == cases[3]["node_hash"]


def test_roots_and_node_hashes() -> None:
    leaves = [tlog.leaf_hash(h(x)) for x in M["leaves"]]
    for size, root in enumerate(M["roots_by_size"]):
        assert tlog.root_from_leaf_hashes(leaves[:size]).hex() == root
    assert [x.hex() for x in leaves] == M["node_hashes_by_level"][0]
    level = leaves
    for want in M["node_hashes_by_level"][1:]:
        level = [tlog.node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        assert [x.hex() for x in level] == want[: len(level)]


@pytest.mark.parametrize("case", M["inclusion_proofs"], ids=lambda c: f"{c['leaf_index']}of{c['tree_size']}")
def test_inclusion_proofs(case: dict[str, Any]) -> None:
    proof = [h(p) for p in case["proof"]]
    tlog.verify_inclusion(case["leaf_index"], case["tree_size"], h(case["leaf_hash"]), proof, h(case["root"]))
    leaves = [tlog.leaf_hash(h(x)) for x in M["leaves"][: case["tree_size"]]]
    assert tlog.inclusion_proof(leaves, case["leaf_index"]) == proof


@pytest.mark.parametrize("case", M["consistency_proofs"], ids=lambda c: f"{c['size1']}to{c['size2']}")
def test_consistency_proofs(case: dict[str, Any]) -> None:
    proof = [h(p) for p in case["proof"]]
    tlog.verify_consistency(case["size1"], case["size2"], h(case["root1"]), h(case["root2"]), proof)
    leaves = [tlog.leaf_hash(h(x)) for x in M["leaves"][: case["size2"]]]
    assert tlog.consistency_proof(leaves, case["size1"]) == proof


@pytest.mark.parametrize("case", V["merkle_probes"]["inclusion"], ids=lambda c: c["file"])
def test_inclusion_probes(case: dict[str, Any]) -> None:
    args = (case["leaf_index"], case["tree_size"], h(case["leaf_hash"]), [h(p) for p in case["proof"]], h(case["root"]))
    if case["valid"]:
        tlog.verify_inclusion(*args)
    else:
        with pytest.raises(tlog.ProofError):
            tlog.verify_inclusion(*args)


@pytest.mark.parametrize("case", V["merkle_probes"]["consistency"], ids=lambda c: c["file"])
def test_consistency_probes(case: dict[str, Any]) -> None:
    args = (case["size1"], case["size2"], h(case["root1"]), h(case["root2"]), [h(p) for p in case["proof"]])
    if case["valid"]:
        tlog.verify_consistency(*args)
    else:
        with pytest.raises(tlog.ProofError):
            tlog.verify_consistency(*args)


def _verifiers(names: list[str]) -> list[tlog.Verifier]:
    return [tlog.parse_verifier_key(SN["verifiers"][n]["vkey"]) for n in names]


def test_verifier_keys() -> None:
    for v in SN["verifiers"].values():
        parsed = tlog.parse_verifier_key(v["vkey"])
        assert (parsed.name, f"{parsed.key_id:08x}", parsed.alg) == (v["name"], v["key_id"], v["sig_type"])
        assert parsed.public_key.hex() == v["public_key"]
        assert parsed.vkey() == v["vkey"]


@pytest.mark.parametrize("case", SN["bad_vkeys"], ids=lambda c: c["why"])
def test_bad_verifier_keys(case: dict[str, Any]) -> None:
    with pytest.raises(tlog.UnknownKeyError):
        tlog.parse_verifier_key(case["vkey"])


def test_signer_key_reproduces_signature() -> None:
    sk = SN["signer_key"]
    signer = tlog.Signer.parse(sk["skey"])
    assert signer.seed.hex() == sk["ed25519_seed"]
    assert signer.skey() == sk["skey"]
    assert signer.verifier.vkey() == SN["verifiers"]["peter"]["vkey"]
    signed = tlog.sign_note(SN["text"], [signer]).decode()
    assert signed == SN["text"] + "\n" + SN["signatures"]["peter"]["line"]
    assert signer.sign(SN["text"].encode()).hex() == SN["signatures"]["peter"]["ed25519_signature"]


@pytest.mark.parametrize("case", SN["open_cases"], ids=lambda c: c["desc"])
def test_open_cases(case: dict[str, Any]) -> None:
    if "note_repeat" in case:
        r = case["note_repeat"]
        text = r["prefix"] + r["line"] * r["count"]
    else:
        text = case["note"]
    verifiers = _verifiers(case["verifiers"])
    if not case["ok"]:
        err = {
            "note has no verifiable signatures": tlog.NoVerifiableSignatureError,
            "malformed note": tlog.MalformedError,
        }.get(case["error"], tlog.SignatureError)
        with pytest.raises(err) as exc:
            tlog.open_note(text.encode(), verifiers)
        assert case["error"] in str(exc.value)
        return
    note = tlog.open_note(text.encode(), verifiers)
    assert note.text == SN["text"]
    assert [s.name for s in note.verified] == case["verified"]
    if "unverified" in case:
        assert [s.name for s in note.unverified] == case["unverified"]
    if "unverified_lines" in case:
        assert [s.line() for s in note.unverified] == case["unverified_lines"]


@pytest.mark.parametrize("text", SN["malformed_notes"]["notes"])
def test_malformed_notes(text: str) -> None:
    with pytest.raises(tlog.MalformedError, match="malformed note"):
        tlog.open_note(text.encode(), _verifiers(["peter"]))


@pytest.mark.parametrize("raw", SN["malformed_notes"]["also_malformed_bytes_hex"])
def test_malformed_note_bytes(raw: str) -> None:
    with pytest.raises(tlog.MalformedError):
        tlog.open_note(h(raw), _verifiers(["peter"]))


def test_c2sp_example() -> None:
    ex = SN["c2sp_example"]
    note = tlog.open_note(ex["note"], [tlog.parse_verifier_key(ex["vkey"])])
    assert note.text == "This is an example message.\n"


def _witness() -> tlog.Verifier:
    return tlog.parse_verifier_key(CO["witness"]["vkey"])


def test_cosignature_v1() -> None:
    w = _witness()
    assert w.alg == tlog.ALG_COSIGNATURE_V1 and f"{w.key_id:08x}" == CO["witness"]["key_id"]
    assert w.public_key.hex() == CO["public_key"]
    assert tlog.cosignature_message(CO["checkpoint_body"], 1234).decode() == CO["signed_message"]
    note = tlog.parse_note(CO["checkpoint_body"] + "\n" + CO["cosignature_line"] + "\n")
    (sig,) = note.signatures
    assert sig.payload[8:].hex() == CO["decoded"]["ed25519_signature"]
    assert tlog.verify_cosignature(CO["checkpoint_body"], sig, w) == CO["decoded"]["timestamp"] == 1234
    # the signer side reproduces the line (Ed25519 is deterministic)
    signer = tlog.Signer(CO["witness"]["name"], h(CO["ed25519_seed"]))
    assert tlog.cosign(CO["checkpoint_body"], signer, 1234).line() == CO["cosignature_line"] + "\n"


@pytest.mark.parametrize("case", CO["must_fail"], ids=lambda c: c["desc"])
def test_cosignature_must_fail(case: dict[str, Any]) -> None:
    note = tlog.parse_note(CO["checkpoint_body"] + "\n" + case["cosignature_line"] + "\n")
    (sig,) = note.signatures
    try:
        ts = tlog.verify_cosignature(CO["checkpoint_body"], sig, _witness())
    except tlog.SignatureError:
        return
    assert ts is None


def test_sigsum_log_checkpoint_and_witness_count() -> None:
    c = CO["log_checkpoint_same_key"]
    key = tlog.parse_verifier_key(c["vkey"])
    sc = tlog.open_checkpoint(c["checkpoint"], key)
    assert sc.checkpoint.size == 10
    # the sigsum log checkpoint carries no cosignature from the witness: a quorum of one is refused
    with pytest.raises(tlog.CheckpointError, match="1 required"):
        tlog.open_checkpoint(c["checkpoint"], key, witnesses=[_witness()], min_witnesses=1)


def test_go_sumdb_checkpoint() -> None:
    g = RC["go_sumdb"]
    key = tlog.parse_verifier_key(g["vkey"])
    sc = tlog.open_checkpoint(g["checkpoint"], key, origin=g["origin"])
    assert (sc.checkpoint.size, sc.checkpoint.root.hex()) == (g["tree_size"], g["root_hash"])
    assert sc.note.verified[0].payload.hex() == g["ed25519_signature"]
    with pytest.raises(tlog.SignatureError):
        tlog.open_checkpoint(g["must_fail"]["checkpoint"], key, origin=g["origin"])
    with pytest.raises(tlog.CheckpointError, match="origin"):
        tlog.open_checkpoint(g["checkpoint"], key)  # origin differs from the key name


@pytest.mark.parametrize("name", ["rekor_v2_staging_alpha1", "rekor_v2_staging_alpha3_witnessed"])
def test_rekor_v2_checkpoint_and_inclusion(name: str) -> None:
    r = RC[name]
    key = tlog.parse_verifier_key(r["vkey"])
    assert key.public_key.hex() == r["log_public_key"]
    witnesses = [tlog.parse_verifier_key(c["vkey"]) for c in r.get("cosignatures", [])]
    sc = tlog.open_checkpoint(r["checkpoint"], key, witnesses=witnesses, min_witnesses=len(witnesses))
    assert (sc.checkpoint.origin, sc.checkpoint.size, sc.checkpoint.root.hex()) == (
        r["origin"],
        r["tree_size"],
        r["root_hash"],
    )
    assert sorted(sc.witnesses) == sorted((c["witness"], c["timestamp"]) for c in r.get("cosignatures", []))
    leaf = tlog.leaf_hash(h(r["leaf_data"]))
    assert leaf.hex() == r["leaf_hash"]
    proof = [h(p) for p in r["inclusion_proof"]]
    tlog.verify_inclusion(r["leaf_index"], r["tree_size"], leaf, proof, sc.checkpoint.root)
    with pytest.raises(tlog.ProofError):
        tlog.verify_inclusion(r["leaf_index"] - 1, r["tree_size"], leaf, proof, sc.checkpoint.root)


@pytest.mark.parametrize("case", TT["tile_paths"], ids=lambda c: c["path"])
def test_tile_paths(case: dict[str, Any]) -> None:
    assert tlog.tile_path(case["level"], case["index"], case["width"]) == case["path"]
    _, level, index = case["path"].split("/", 2)
    assert tlog.parse_tile_path(level, index) == (case["level"], case["index"], case["width"])


@pytest.mark.parametrize("case", TT["entry_bundle_paths"], ids=lambda c: c["path"])
def test_entry_bundle_paths(case: dict[str, Any]) -> None:
    assert tlog.entries_path(case["index"], case["width"]) == case["path"]


@pytest.mark.parametrize("case", TT["entry_bundle_for_leaf"], ids=lambda c: c["path"])
def test_entry_bundle_for_leaf(case: dict[str, Any]) -> None:
    assert tlog.entries_path_for_leaf(case["leaf_index"], case["tree_size"]) == case["path"]


@pytest.mark.parametrize("case", TT["parse_ok"], ids=lambda c: c["index"])
def test_parse_tile_path_ok(case: dict[str, Any]) -> None:
    assert list(tlog.parse_tile_path(case["level"], case["index"])) == case["want"]


@pytest.mark.parametrize("case", TT["parse_must_fail"], ids=lambda c: "/".join(c))
def test_parse_tile_path_must_fail(case: list[str]) -> None:
    with pytest.raises(tlog.MalformedError):
        tlog.parse_tile_path(case[0], case[1])


@pytest.mark.parametrize("case", TT["c2sp_tree_examples"], ids=lambda c: str(c["tree_size"]))
def test_c2sp_tree_examples(case: dict[str, Any]) -> None:
    size = case["tree_size"]
    assert size // 256 == case["level0_full"]
    assert size % 256 == case.get("level0_partial_width", 0)
    assert (size >> 8) // 256 == case.get("level1_full", 0)
    assert (size >> 8) % 256 == case.get("level1_partial_width", 0)
    assert (size >> 16) % 256 == case.get("level2_partial_width", 0)


def test_base64_root_matches() -> None:
    g = RC["go_sumdb"]
    assert base64.b64decode(g["checkpoint"].split("\n")[2]).hex() == g["root_hash"]
