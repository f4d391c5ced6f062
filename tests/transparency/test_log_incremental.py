"""The sequencer's incremental appends (only the tree's right edge is read and hashed) write byte for byte the
tiles, entry bundles and roots that the whole tree computed from scratch gives, at sizes on both sides of the
256-entry tile boundaries of levels 0, 1 and 2; a reopened log, a log from before ``nodes`` existed, and a
crash between sequencing and writing files all end in the same files."""

from __future__ import annotations

from pathlib import Path

import pytest

import tlog
from transparency.log import Log

# cumulative sizes: single steps and batches that end just before, on and after tile boundaries at every level
# (a level-1 tile fills at 65536 leaves, so a level-2 hash appears there)
SIZES = [1, 2, 255, 256, 257, 511, 512, 513, 700, 65535, 65536, 65537, 65792, 65793, 66100]


def _entry(i: int) -> bytes:
    return b"entry %d" % i


def _scratch_files(size: int) -> dict[str, bytes]:
    """The tiles and entry bundles of a tree of ``size`` leaves, computed from all leaves at once."""
    hashes = [tlog.leaf_hash(_entry(i)) for i in range(size)]
    levels: list[list[bytes]] = []
    tlog.extend_levels(levels, hashes)
    files = tlog.tiles_to_write(levels, 0, size)
    for n in range((size + 255) // 256):
        chunk = [_entry(i) for i in range(n * 256, min((n + 1) * 256, size))]
        files[tlog.entries_path(n, 0 if len(chunk) == 256 else len(chunk))] = tlog.encode_entry_bundle(chunk)
    return files


def _check(log: Log, size: int) -> None:
    public = log.dir / "public"
    for path, data in _scratch_files(size).items():
        assert (public / path).read_bytes() == data, path
    cp = tlog.open_checkpoint((public / "checkpoint").read_bytes(), log.signer.verifier, origin=log.origin).checkpoint
    assert cp.size == size
    assert cp.root == tlog.root_from_leaf_hashes([tlog.leaf_hash(_entry(i)) for i in range(size)])


def test_incremental_appends_equal_the_tree_from_scratch(tmp_path: Path) -> None:
    log = Log.init(tmp_path / "log", "test.veil.example/log")
    done = 0
    for size in SIZES:
        # the batch's last entry repeats one already logged: it keeps its index and adds nothing
        batch = [_entry(i) for i in range(done, size)] + ([_entry(0)] if done else [])
        indices = log.append(batch)
        assert indices == list(range(done, size)) + ([0] if done else [])
        done = size
        _check(log, size)
        if size == 513:  # state survives a close: the next append starts from what SQLite kept
            log.close()
            log = Log(tmp_path / "log")
    log.close()


def test_log_without_nodes_is_rebuilt_when_opened(tmp_path: Path) -> None:
    log = Log.init(tmp_path / "log", "test.veil.example/log")
    log.append([_entry(i) for i in range(600)])
    log.db.execute("DROP TABLE nodes")  # as a log written before the table existed
    log.db.commit()
    log.close()
    log = Log(tmp_path / "log")
    log.append([_entry(i) for i in range(600, 70000)])
    _check(log, 70000)
    log.close()


def test_files_a_crash_left_unwritten_are_written_by_the_next_append(tmp_path: Path) -> None:
    log = Log.init(tmp_path / "log", "test.veil.example/log")
    log.append([_entry(i) for i in range(300)])
    checkpoint_at_300 = tmp_path / "checkpoint-300"
    checkpoint_at_300.write_bytes((log.dir / "public" / "checkpoint").read_bytes())
    log.append([_entry(i) for i in range(300, 800)])
    # as if the process had died after sequencing 300..800 and before writing their files
    (log.dir / "public" / tlog.tile_path(0, 1)).unlink()
    (log.dir / "public" / tlog.entries_path(2)).unlink()
    checkpoint_at_300.replace(log.dir / "public" / "checkpoint")
    log.append([_entry(800)])
    _check(log, 801)
    log.close()


@pytest.mark.parametrize("size", [*range(0, 520), 65535, 65536, 65537, 70000])
def test_root_from_the_right_edge(size: int) -> None:
    hashes = [tlog.leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    levels: list[list[bytes]] = []
    tlog.extend_levels(levels, hashes)
    want = tlog.root_from_leaf_hashes(hashes)
    assert tlog.root_from_levels(levels, size) == want
    # only each level's last tile on, as the log reads it
    starts = [(size >> (8 * lv)) >> 8 << 8 for lv in range(len(levels))]
    edge = [levels[lv][starts[lv]:] for lv in range(len(levels))]
    assert tlog.root_from_levels(edge, size, starts) == want
