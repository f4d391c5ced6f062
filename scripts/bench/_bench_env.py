"""Shared start of the benchmark scripts: put the repository on ``sys.path`` (so they import ``ohttp``, ``enclave``,
``proxy`` and the process harness ``tests.harness`` from this checkout) and, when a script is started by an
interpreter without the project's packages (``./scripts/bench/bench_x.py`` with the system Python), run it again under
the project's ``.venv``. A script imports it first, from its own folder (``from _bench_env import prepare``), before
anything that needs the packages; ``_common`` holds what the benchmarks share besides the harness."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def prepare(script: str, *modules: str) -> Path:
    """Make the repository importable; re-exec ``script`` under ``.venv`` if any of ``modules`` is missing."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if all(importlib.util.find_spec(m) is not None for m in modules):
        return ROOT
    venv_python = ROOT / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), script, *sys.argv[1:]])
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    raise SystemExit(f"{Path(script).name}: missing {', '.join(missing)}; run ./scripts/test once to set up .venv")
