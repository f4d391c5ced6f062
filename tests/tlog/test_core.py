"""The tlog core beyond the vectors: proofs built from tiles equal the direct ones for trees that cross tile
boundaries (partial tiles at several levels), entry bundles, checkpoints round-trip, forks and rollbacks refused."""

from __future__ import annotations

import hashlib

import pytest

import tlog
from tlog.tiles import TileId, tile_for_node


def _leaves(n: int) -> list[bytes]:
    return [tlog.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _published(leaves: list[bytes], steps: list[int]) -> dict[str, bytes]:
    """Files a log would have written growing through ``steps``."""
    levels: list[list[bytes]] = []
    files: dict[str, bytes] = {}
    old = 0
    for size in steps:
        tlog.extend_levels(levels, leaves[old:size])
        files.update(tlog.tiles_to_write(levels, old, size))
        old = size
    return files


def _fetch(files: dict[str, bytes], need: list[TileId]) -> dict[TileId, bytes]:
    return {t: files[t.path()] for t in need}


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 511, 600, 65536 + 300])
def test_tile_proofs_equal_direct_proofs(size: int) -> None:
    leaves = _leaves(size)
    files = _published(leaves, [size // 3, size // 2, size])
    for index in sorted(i for i in {0, 1, size // 2, size - 2, size - 1} if 0 <= i < size):
        tiles = _fetch(files, tlog.inclusion_tiles(index, size))
        proof = tlog.inclusion_proof_from_tiles(tiles, index, size)
        assert proof == tlog.inclusion_proof(leaves, index)
        tlog.verify_inclusion(index, size, leaves[index], proof, tlog.root_from_leaf_hashes(leaves))
    for old in sorted({1, size // 3, size - 1}):
        if not 0 < old < size:
            continue
        proof = tlog.consistency_proof_from_tiles(_fetch(files, tlog.consistency_tiles(old, size)), old, size)
        assert proof == tlog.consistency_proof(leaves, old)


def test_tiles_at_c2sp_example_size() -> None:
    levels: list[list[bytes]] = []
    tlog.extend_levels(levels, _leaves(70000))
    paths = set(tlog.tiles_to_write(levels, 0, 70000))
    assert "tile/0/272" in paths and "tile/0/273.p/112" in paths and "tile/0/274" not in paths
    assert "tile/1/000" in paths and "tile/1/001.p/17" in paths and "tile/2/000.p/1" in paths
    assert tlog.parse_tile(b"\x00" * 32 * 112, 112) == [b"\x00" * 32] * 112
    with pytest.raises(tlog.MalformedError):
        tlog.parse_tile(b"\x00" * 32 * 111, 112)
    assert tile_for_node(16, 0, 70000)[0] == TileId(2, 0, 1)


def test_missing_tile_is_a_proof_error() -> None:
    with pytest.raises(tlog.ProofError, match="not fetched"):
        tlog.inclusion_proof_from_tiles({}, 3, 10)


def test_entry_bundles() -> None:
    entries = [b"", b"a", b"x" * 300]
    data = tlog.encode_entry_bundle(entries)
    assert tlog.parse_entry_bundle(data, 3) == entries
    for bad in (data[:-1], data + b"\x00"):
        with pytest.raises(tlog.MalformedError):
            tlog.parse_entry_bundle(bad, 3)
    with pytest.raises(tlog.MalformedError):
        tlog.parse_entry_bundle(data, 4)
    with pytest.raises(tlog.MalformedError):
        tlog.encode_entry_bundle([b"x" * 65536])


def test_checkpoint_round_trip_and_witnesses() -> None:
    log = tlog.generate_signer("log.example/veil")
    w1, w2 = tlog.generate_signer("w1.example"), tlog.generate_signer("w2.example")
    wv = [tlog.Verifier.from_public_key(w.name, w.verifier.public_key, tlog.ALG_COSIGNATURE_V1) for w in (w1, w2)]
    cp = tlog.Checkpoint("log.example/veil", 5, hashlib.sha256(b"r").digest())
    cos = [tlog.cosign(cp.text(), w1, 1700000000)]
    raw = tlog.sign_checkpoint(cp, log, cos)
    sc = tlog.open_checkpoint(raw, log.verifier, witnesses=wv, min_witnesses=1)
    assert sc.checkpoint == cp and sc.witnesses == (("w1.example", 1700000000),)
    with pytest.raises(tlog.CheckpointError, match="2 required"):
        tlog.open_checkpoint(raw, log.verifier, witnesses=wv, min_witnesses=2)
    other = tlog.generate_signer("log.example/veil")
    with pytest.raises(tlog.NoVerifiableSignatureError):
        tlog.open_checkpoint(raw, other.verifier)
    for text in ("o\n05\n" + cp.text().split("\n")[2] + "\n", "o\n5\nAAAA\n", "o\n5\n"):
        with pytest.raises(tlog.MalformedError):
            tlog.parse_checkpoint(text)


def test_successor_checks() -> None:
    leaves = _leaves(10)
    cp = [tlog.Checkpoint("o", n, tlog.root_from_leaf_hashes(leaves[:n])) for n in range(11)]
    tlog.check_successor(cp[4], cp[10], tlog.consistency_proof(leaves, 4))
    tlog.check_successor(cp[0], cp[3], [])
    tlog.check_successor(cp[4], cp[4], [])
    with pytest.raises(tlog.ConsistencyError, match="rolled-back"):
        tlog.check_successor(cp[10], cp[4], [])
    forked = tlog.Checkpoint("o", 4, hashlib.sha256(b"fork").digest())
    with pytest.raises(tlog.ConsistencyError, match="forked"):
        tlog.check_successor(cp[4], forked, [])
    fork10 = tlog.Checkpoint("o", 10, tlog.root_from_leaf_hashes(_leaves(3) + [b"\x01" * 32] * 7))
    with pytest.raises(tlog.ConsistencyError, match="forked"):
        tlog.check_successor(cp[4], fork10, tlog.consistency_proof(leaves, 4))
    with pytest.raises(tlog.CheckpointError, match="origin"):
        tlog.check_successor(cp[4], tlog.Checkpoint("p", 10, cp[10].root), [])


def test_signer_rejects_bad_names_and_keys() -> None:
    with pytest.raises(tlog.UnknownKeyError):
        tlog.generate_signer("has space")
    with pytest.raises(tlog.UnknownKeyError):
        tlog.generate_signer("a+b")
    s = tlog.generate_signer("pub.example")
    assert tlog.Signer.parse(s.skey()) == s
    with pytest.raises(tlog.UnknownKeyError):
        tlog.Signer.parse(s.skey().replace("PRIVATE", "PUBLIC"))
