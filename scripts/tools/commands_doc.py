#!/usr/bin/env python3
"""Write the option tables of docs/COMMANDS.md from the commands' own parsers (``veil <command> --help``).

Each table sits between ``<!-- options: COMMAND -->`` and ``<!-- /options -->`` in docs/COMMANDS.md; the prose
around them is written by hand. ``--check`` exits 1 when a table is out of step with the code (the test suite
runs it: tests/deploy/test_docs.py).

Usage::

    scripts/tools/commands_doc.py [--check] [--doc docs/COMMANDS.md]
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import veil_cli  # noqa: E402

DOC = ROOT / "docs" / "COMMANDS.md"
_BLOCK = re.compile(r"(<!-- options: ([\w -]+) -->\n)(.*?)(<!-- /options -->)", re.S)
_NOISE = re.compile(r"\s*\(default: [^)]*\)|\s*\[env [A-Z0-9_]+\]")


def _default(value: object) -> str:
    if value in (None, False, [], "", argparse.SUPPRESS):
        return ""
    text = str(value).replace(str(ROOT), "<repo>").replace(str(Path.home()), "~")
    return f"`{text}`"


def _rows(parser: argparse.ArgumentParser, command: str) -> list[str]:
    options = {f"--{o.name}": o for o in getattr(parser.get_default("_veil_options"), "__iter__", lambda: iter(()))()}
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings or action.dest == "config":
            continue
        flag = max(action.option_strings, key=len)
        opt = options.get(flag)
        switch = action.nargs == 0
        shown = flag if switch else f"{flag} {action.metavar or 'X'}"
        if action.choices:
            shown = f"{flag} {{{','.join(map(str, action.choices))}}}"
        default = "off" if switch else _default(opt.default if opt is not None else action.default)
        if opt is not None and opt.repeat:
            default = "repeatable"
        env = f"`{veil_cli.env_name(command, opt.name)}`" if opt is not None else ""
        text = action.help or ""
        if opt is not None:  # veil_cli.Option: its default and variable have their own columns
            text = _NOISE.sub("", text)
        text = text.replace("|", "\\|")
        rows.append(f"| `{shown}` | {default} | {env} | {text} |")
    return rows


def table(command: str) -> str:
    """The Markdown option table(s) of ``veil COMMAND`` (``COMMAND ACTION`` for commands with actions)."""
    name, _, action = command.partition(" ")
    module, _ = veil_cli.SUBCOMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"veil {name}")
    importlib.import_module(module).add_arguments(parser)
    if action:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[action]
    head = ["| option | default | environment | meaning |", "| --- | --- | --- | --- |"]
    return "\n".join(head + _rows(parser, name)) + "\n"


def render(text: str) -> str:
    """``text`` with every marked table regenerated."""
    return _BLOCK.sub(lambda m: m.group(1) + table(m.group(2).strip()) + m.group(4), text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 if the document is out of step")
    ap.add_argument("--doc", type=Path, default=DOC)
    args = ap.parse_args()
    text = args.doc.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.doc} is out of step with the commands' options: run scripts/tools/commands_doc.py")
            return 1
        return 0
    args.doc.write_text(new)
    print(f"wrote {len(_BLOCK.findall(new))} option tables into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
