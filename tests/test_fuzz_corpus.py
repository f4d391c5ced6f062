"""Replays the fuzzing corpus (tests/fuzz_corpus, grown by scripts/tools/fuzz.py) and the seeds through every target:
each input must give a result or the parser's own error type. A crash found by a campaign lands here for good."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("veil_fuzz", REPO / "scripts" / "tools" / "fuzz.py")
assert _spec is not None and _spec.loader is not None
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.mark.parametrize("target", sorted(fuzz.TARGETS))
def test_corpus_and_seeds_hold_the_invariant(target: str) -> None:
    inputs = fuzz.seeds(target) + fuzz.corpus_inputs(target)
    assert inputs, f"no seeds or corpus for {target}"
    for data in inputs:
        fuzz.check(target, data)
    # Truncations and single-byte flips of every seed too: cheap, and they reach the error paths.
    for data in fuzz.seeds(target)[:4]:
        for cut in range(0, len(data), max(1, len(data) // 50)):
            fuzz.check(target, data[:cut])
            flipped = bytearray(data)
            flipped[cut] ^= 0x41
            fuzz.check(target, bytes(flipped))


def test_crashes_folder_is_empty() -> None:
    crashes = REPO / "tests" / "fuzz_corpus" / "crashes"
    found = [p.name for p in crashes.glob("*") if p.name != ".keep"] if crashes.is_dir() else []
    assert not found, f"fuzzing crashes to turn into regression tests: {found}"
