"""The documents that name tests name tests that exist: docs/THREAT-MODEL.md lists, per attack, the test that
reproduces it; a renamed or deleted test must not leave a defence that only the document claims."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: `tests/x/test_y.py::name` or `::name` (same file as the previous reference), optionally `::Class::method`
_REF = re.compile(r"`((?:tests/[\w/]+\.py)?)((?:::\w+)+)(?:\[[^\]]*\])?`")


def _names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.add(node.name)
        elif isinstance(node, ast.ClassDef):
            out.add(node.name)
            out.update(f"{node.name}::{f.name}" for f in node.body
                       if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)))
    return out


def test_every_test_the_threat_model_names_exists() -> None:
    text = (REPO / "docs" / "THREAT-MODEL.md").read_text()
    current: str | None = None
    refs = []
    for path, name in _REF.findall(text):
        current = path or current
        assert current is not None, f"{name} has no file before it"
        refs.append((current, name.lstrip(":")))
    assert len(refs) >= 40
    missing = [f"{p}::{n}" for p, n in refs if not (REPO / p).is_file() or n not in _names(REPO / p)]
    assert not missing, missing


def test_the_commands_reference_is_in_step_with_the_options() -> None:
    """docs/COMMANDS.md's option tables are generated from the commands' own parsers; a new or changed option
    without a regenerated document fails here (run scripts/tools/commands_doc.py)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(REPO / "scripts" / "tools" / "commands_doc.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (REPO / "docs" / "COMMANDS.md").read_text()
    for command in ("gateway", "relay", "proxy", "up", "broker", "attest verify", "model encrypt"):
        assert f"<!-- options: {command} -->" in text
