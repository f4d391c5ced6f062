"""The client's kept checkpoints (``save_state``) under concurrent verifiers (``veil proxy`` runs them in worker
threads): every origin written survives (no lost update), a smaller size never replaces a larger one, another tree
of the same size is a fork, an unreadable file is refused rather than overwritten, and no temporary file is left."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import tlog
from transparency.client import load_state, save_state


def _cp(origin: str, size: int, root: bytes | None = None) -> tlog.Checkpoint:
    return tlog.Checkpoint(origin, size, root if root is not None else size.to_bytes(32, "big"))


def test_concurrent_writers_lose_nothing_and_never_go_back(tmp_path: Path) -> None:
    state = tmp_path / "state" / "log-state.json"
    threads, rounds = 8, 40
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        start.wait()
        try:
            for i in range(rounds):
                save_state(state, _cp(f"own.example/{t}/{i}", 1), b"cp\n")  # one origin per write: none may be lost
                # all threads race on one shared origin, each in its own order of sizes
                size = (i * 7 + t * 13) % rounds + 1
                save_state(state, _cp("shared.example/log", size), b"cp\n")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    pool = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert errors == []
    for t in range(threads):
        for i in range(rounds):
            assert load_state(state, f"own.example/{t}/{i}") is not None, (t, i)
    shared = load_state(state, "shared.example/log")
    assert shared is not None and shared.size == rounds  # the largest size written, whatever the order
    assert sorted(os.listdir(state.parent)) == ["log-state.json", "log-state.json.lock"]  # no temporary file left


def test_a_smaller_size_never_replaces_a_larger_one(tmp_path: Path) -> None:
    state = tmp_path / "log-state.json"
    save_state(state, _cp("log.example", 10), b"ten\n")
    save_state(state, _cp("log.example", 5), b"five\n")
    kept = load_state(state, "log.example")
    assert kept is not None and kept.size == 10
    with pytest.raises(tlog.ConsistencyError, match="forked"):
        save_state(state, _cp("log.example", 10, b"\x07" * 32), b"other ten\n")
    save_state(state, _cp("log.example", 11), b"eleven\n")
    assert load_state(state, "log.example").size == 11  # type: ignore[union-attr]


def test_an_unreadable_state_file_is_refused_not_overwritten(tmp_path: Path) -> None:
    state = tmp_path / "log-state.json"
    state.write_text("{not json")
    with pytest.raises(tlog.TlogError, match="unreadable"):
        save_state(state, _cp("log.example", 3), b"three\n")
    assert state.read_text() == "{not json"
