"""The ``veil`` command: a thin dispatcher; each subcommand's code lives in the package it belongs to.

Also the one place that resolves options, so every subcommand behaves alike: a value comes from the command
line, else from the environment (``VEIL_<SUBCOMMAND>_<OPTION>``), else from the TOML file given by ``--config``
(table ``[<subcommand>]``), else from the option's default.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import tomllib
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Final

#: subcommand -> (module, one-line help). Each module defines ``add_arguments(parser)`` and ``run(args) -> int``.
SUBCOMMANDS: Final[dict[str, tuple[str, str]]] = {
    "gateway": ("enclave.cli", "run the OHTTP gateway (inside the TEE) in front of an inference engine"),
    "relay": ("proxy.relay.cli", "run an OHTTP relay that forwards ciphertext to allow-listed gateways"),
    "proxy": ("proxy.client.cli", "run a local OpenAI-compatible endpoint that encrypts everything to the gateway"),
    "up": ("proxy.up", "start gateway, relay and client proxy on loopback and chat"),
    "attest": ("enclave.attestation.cli", "verify attestation evidence (a bundle, a URL, or raw files)"),
    "broker": ("enclave.broker.cli", "run the key broker (Trustee KBS) that releases secrets to attested gateways"),
    "model": ("enclave.model.cli", "encrypt a model directory for gateways, or decrypt one to check it"),
    "issuer": ("proxy.issuer.cli", "run a Privacy Pass issuer that gives API-key holders anonymous tokens"),
    "release": ("transparency.release_cli", "create and sign release statements with a publisher key"),
    "log": ("transparency.log_cli", "run a transparency log (static tlog-tiles), append to it, monitor one"),
}


#: Subcommands that run a server; they get the event loop chosen by ``VEIL_EVENT_LOOP``.
SERVERS: Final = frozenset({"gateway", "relay", "proxy", "issuer"})
#: ``VEIL_EVENT_LOOP``: ``auto`` (default) is uvloop when it is installed, else asyncio's own loop.
EVENT_LOOPS: Final = ("auto", "uvloop", "asyncio")


def die_with_parent(parent: int | None = None) -> None:
    """For ``preexec_fn``: the child gets SIGTERM when its parent dies, even by SIGKILL (Linux PR_SET_PDEATHSIG),
    so no orphan outlives the process that supervises it (vLLM under the gateway, the chain under ``veil up``, the
    relay's workers).

    ``parent`` is the pid the child must still have as its parent once the signal is set (:func:`dies_with_me` binds
    the caller's): a parent that died between the fork and ``prctl`` sends no signal (the child has been handed to
    another process already), so the child leaves at once (``os._exit(1)``) instead of serving on unsupervised."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def dies_with_me() -> Callable[[], None]:
    """A ``preexec_fn`` for a child of this process: :func:`die_with_parent` bound to this process's pid (taken
    here, before the fork; in the child ``os.getppid()`` is only what the parent is by then)."""
    import functools

    return functools.partial(die_with_parent, os.getpid())


def event_loop_kind() -> str:
    """The event loop the servers run on: ``"uvloop"`` or ``"asyncio"`` (from ``VEIL_EVENT_LOOP``)."""
    wanted = os.environ.get("VEIL_EVENT_LOOP", "auto").strip().lower() or "auto"
    if wanted not in EVENT_LOOPS:
        raise SystemExit(f"veil: VEIL_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, got {wanted!r}")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise SystemExit("veil: VEIL_EVENT_LOOP=uvloop but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop of the kind :func:`event_loop_kind` names."""
    if event_loop_kind() == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def install_event_loop() -> str:
    """Make ``asyncio.new_event_loop()`` (what ``aiohttp.web.run_app`` calls) return :func:`event_loop_kind`'s loop.

    uvloop does the socket and timer work of the event loop in C: less CPU per request for every server. Returns
    the kind in use; asyncio's own loop where event loop policies no longer exist (Python 3.16+).
    """
    kind = event_loop_kind()
    if kind == "uvloop":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # policies are deprecated from Python 3.14 on
            try:
                import uvloop

                asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            except AttributeError:
                return "asyncio"
    return kind


@dataclass(frozen=True)
class Option:
    """One option of a subcommand, settable from CLI, environment or TOML."""

    name: str  # e.g. "listen"; the flag is --listen, the env var VEIL_GATEWAY_LISTEN, the TOML key listen
    help: str
    default: Any = None
    type: Callable[[str], Any] = str
    flag: bool = False  # a boolean switch
    repeat: bool = False  # may be given several times; a list
    choices: tuple[str, ...] | None = None
    metavar: str | None = None


def add_options(parser: argparse.ArgumentParser, command: str, options: list[Option]) -> None:
    """Register ``options`` on ``parser``; call :func:`resolve_options` after parsing."""
    parser.add_argument("--config", metavar="FILE", help=f"TOML file with a [{command}] table of options")
    for opt in options:
        env = env_name(command, opt.name)
        dest = opt.name.replace("-", "_")
        shown = "" if opt.default in (None, False, []) else f" (default: {opt.default})"
        text = f"{opt.help}{shown} [env {env}]"
        if opt.flag:
            parser.add_argument(f"--{opt.name}", dest=dest, action="store_const", const=True, default=None, help=text)
        elif opt.repeat:
            parser.add_argument(f"--{opt.name}", dest=dest, action="append", default=None, help=text, metavar=opt.metavar)
        else:
            parser.add_argument(
                f"--{opt.name}", dest=dest, default=None, help=text, choices=opt.choices, metavar=opt.metavar
            )
    parser.set_defaults(_veil_command=command, _veil_options=options)


def env_name(command: str, option: str) -> str:
    """The environment variable for ``option`` of ``command``."""
    return f"VEIL_{command}_{option}".upper().replace("-", "_")


def resolve_options(args: argparse.Namespace) -> None:
    """Fill every option not given on the command line from the environment, the TOML file or the default."""
    command: str = args._veil_command
    table: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, "rb") as fh:
                table = tomllib.load(fh).get(command, {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SystemExit(f"veil {command}: cannot read config file {args.config}: {exc}") from None
    for opt in args._veil_options:
        dest = opt.name.replace("-", "_")
        if getattr(args, dest) is not None:
            value = getattr(args, dest)
        elif (raw := os.environ.get(env_name(command, opt.name))) is not None:
            if opt.flag:
                value = raw.strip().lower() in ("1", "true", "yes", "on")
            elif opt.repeat:
                value = [v for v in raw.split(",") if v]
            else:
                value = raw
        elif opt.name in table or dest in table:
            value = table.get(opt.name, table.get(dest))
        else:
            value = opt.default
            setattr(args, dest, value)
            continue
        try:
            if opt.flag:
                value = bool(value)
            elif opt.repeat:
                value = [opt.type(str(v)) for v in (value if isinstance(value, list) else [value])]
            elif value is not None:
                value = opt.type(str(value))
        except ValueError as exc:
            raise SystemExit(f"veil {command}: invalid value for --{opt.name}: {exc}") from None
        if opt.choices and value is not None and not opt.repeat and value not in opt.choices:
            raise SystemExit(f"veil {command}: --{opt.name} must be one of {', '.join(opt.choices)}")
        setattr(args, dest, value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``veil``."""
    parser = argparse.ArgumentParser(prog="veil", description="Veil: confidential LLM inference over Oblivious HTTP")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    wanted = next((a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Import only the subcommand being run (and all of them for --help), to keep start-up fast.
        if wanted is None or wanted == name or wanted not in SUBCOMMANDS:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            modules[name] = mod
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if hasattr(args, "_veil_options"):
        resolve_options(args)
    if args.command in SERVERS:
        install_event_loop()
    code: int = modules[args.command].run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
