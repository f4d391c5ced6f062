"""The ``veil`` command: a thin dispatcher; each subcommand's code lives in the package it belongs to."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Final

#: subcommand -> (module, one-line help). Each module defines ``add_arguments(parser)`` and ``run(args) -> int``.
SUBCOMMANDS: Final[dict[str, tuple[str, str]]] = {}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``veil``."""
    parser = argparse.ArgumentParser(prog="veil", description="Veil: confidential LLM inference over Oblivious HTTP")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    code: int = modules[args.command].run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
