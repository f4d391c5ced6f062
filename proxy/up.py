"""``veil up``: gateway, relay and client proxy on loopback as three real processes, then a streamed chat.

This is the local demo of the whole path. No TEE exists on a laptop, so the gateway's evidence is simulated and
the proxy is started with ``--insecure-allow-simulated``; every answer says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from veil_cli import Option, add_options, dies_with_me

OPTIONS = [
    Option("engine", "inference engine of the gateway", "vllm", choices=("vllm", "echo")),
    Option("gateway-port", "loopback port of the gateway", 8081, type=int),
    Option("relay-port", "loopback port of the relay", 8080, type=int),
    Option("proxy-port", "loopback port of the client proxy (the OpenAI base_url)", 8000, type=int),
    Option("model", "model directory for --engine vllm (default: the one scripts/setup-engine makes)"),
    Option("no-chat", "start everything and serve until Ctrl-C/SIGTERM instead of chatting (implied when stdin is "
           "not a terminal: nohup, < /dev/null, a container, a systemd unit)", False, flag=True),
    Option("chat", "chat on stdin even when it is not a terminal (lines piped in; the chain stops at end of input)",
           False, flag=True),
    Option("startup-timeout", "seconds to wait for everything to be healthy", 900.0, type=float),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``veil up`` options."""
    add_options(parser, "up", OPTIONS)


@dataclass
class Child:
    """One supervised piece of the chain."""

    name: str
    args: list[str]
    health: str
    proc: asyncio.subprocess.Process | None = None
    quiet: asyncio.Event = field(default_factory=asyncio.Event)


async def _pump(child: Child) -> None:
    assert child.proc is not None and child.proc.stdout is not None
    async for raw in child.proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        # Once the chat runs, only problems are shown, so they do not interleave with the conversation.
        if not child.quiet.is_set() or " ERROR " in line or " WARNING " in line and "SIMULATED" not in line:
            print(f"  [{child.name}] {line}", flush=True)


async def _start(child: Child) -> None:
    # Own process group: Ctrl-C in the terminal reaches only `veil up`, which stops the chain in order (a second
    # signal straight from the terminal would cut a child's graceful shutdown short). PDEATHSIG: if `veil up` is
    # killed outright, its children still go.
    child.proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "veil_cli", *child.args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, process_group=0, preexec_fn=dies_with_me(),
    )
    asyncio.create_task(_pump(child))


async def _wait_healthy(session: aiohttp.ClientSession, child: Child, deadline: float) -> None:
    last_note = time.monotonic()
    while time.monotonic() < deadline:
        assert child.proc is not None
        if child.proc.returncode is not None:
            raise SystemExit(f"veil up: the {child.name} exited with code {child.proc.returncode} (see its log above)")
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
            async with session.get(child.health, timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    print(f"veil up: {child.name} is ready", flush=True)
                    return
        if time.monotonic() - last_note > 15:
            print(f"veil up: still waiting for the {child.name}…", flush=True)
            last_note = time.monotonic()
        await asyncio.sleep(0.3)
    raise SystemExit(f"veil up: the {child.name} did not become healthy in time")


async def _stop(children: list[Child]) -> None:
    for child in reversed(children):
        if child.proc is not None and child.proc.returncode is None:
            child.proc.send_signal(signal.SIGINT)
    for child in reversed(children):
        if child.proc is not None:
            try:
                await asyncio.wait_for(child.proc.wait(), 20)
            except asyncio.TimeoutError:
                child.proc.kill()
                await child.proc.wait()


class _Lines:
    """Lines from stdin, read by a daemon thread one at a time on request. Not asyncio.to_thread: asyncio.run joins
    its executor's threads at exit, so after Ctrl-C `veil up` would hang in input() until the next Enter."""

    def __init__(self, prompt: str) -> None:
        self._prompt = prompt
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._want = threading.Event()
        threading.Thread(target=self._run, name="veil-up-stdin", daemon=True).start()

    def _run(self) -> None:
        while True:
            self._want.wait()
            self._want.clear()
            try:
                line: str | None = input(self._prompt)
            except (EOFError, OSError, ValueError):  # Ctrl-D, or stdin closed
                line = None
            self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
            if line is None:
                return

    async def readline(self) -> str | None:
        """The next line, or None at end of input; the prompt is shown only when a line is wanted."""
        self._want.set()
        return await self._lines.get()


async def _chat(base_url: str, model: str, interactive: bool) -> None:
    history: list[dict[str, Any]] = []
    lines = _Lines("you> " if interactive else "")
    if interactive:
        print("\nType a message and press Enter. /reset clears the conversation, /quit (or Ctrl-D) leaves.\n", flush=True)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=600)) as s:
        while True:
            line = await lines.readline()
            if line is None:
                print()
                return
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                return
            if text == "/reset":
                history.clear()
                print("(conversation cleared)")
                continue
            if not interactive:
                print(f"you> {text}")
            history.append({"role": "user", "content": text})
            body = {"model": model, "messages": history, "stream": True, "max_tokens": 256, "temperature": 0}
            print("veil> ", end="", flush=True)
            reply = []
            async with s.post(base_url + "/chat/completions", json=body) as r:
                if r.status != 200:
                    err = await r.json(content_type=None)
                    print(f"[error {r.status}: {err.get('error', {}).get('message', err)}]")
                    history.pop()
                    continue
                async for raw in r.content:
                    if not raw.startswith(b"data: ") or raw.strip() == b"data: [DONE]":
                        continue
                    event = orjson.loads(raw[6:])
                    if "error" in event:
                        print(f"\n[error: {event['error'].get('message')}]", end="")
                        break
                    for choice in event.get("choices", []):
                        piece = choice.get("delta", {}).get("content") or ""
                        reply.append(piece)
                        print(piece, end="", flush=True)
            print(flush=True)
            history.append({"role": "assistant", "content": "".join(reply)})


async def _main(args: argparse.Namespace) -> int:
    gw, relay, px = args.gateway_port, args.relay_port, args.proxy_port
    gw_args = ["gateway", "--listen", f"127.0.0.1:{gw}", "--engine", args.engine, "--attestation", "simulated"]
    if args.model:
        gw_args += ["--model", args.model]
    children = [
        Child("gateway", gw_args, f"http://127.0.0.1:{gw}/healthz"),
        # No --cors-origin: the chat page reaches the relay through the proxy's same-origin /relay path.
        Child("relay", ["relay", "--listen", f"127.0.0.1:{relay}",
                        "--gateway", f"local=http://127.0.0.1:{gw}/.well-known/ohttp-gateway"],
              f"http://127.0.0.1:{relay}/healthz"),
        Child("proxy", ["proxy", "--listen", f"127.0.0.1:{px}", "--relay", f"http://127.0.0.1:{relay}/local",
                        "--insecure-allow-simulated"], f"http://127.0.0.1:{px}/healthz"),
    ]
    deadline = time.monotonic() + args.startup_timeout
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with aiohttp.ClientSession() as s:
            if args.engine == "vllm":
                print("veil up: starting the gateway with vLLM (SmolLM2-135M on CPU); loading takes ~20-60 s…",
                      flush=True)
            for child in children:
                await _start(child)
                waiter = asyncio.create_task(_wait_healthy(s, child, deadline))
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if waiter not in done:
                    waiter.cancel()
                    return 130
                waiter.result()
            async with s.get(f"http://127.0.0.1:{px}/v1/models") as r:
                model = (await r.json())["data"][0]["id"]
        base_url = f"http://127.0.0.1:{px}/v1"
        print(f"""
veil up: the whole chain is running on loopback.
  chat in a browser: http://127.0.0.1:{px}/   (encrypts in the page; the proxy forwards only ciphertext)
  OpenAI base_url : {base_url}        (model: {model})
  relay           : http://127.0.0.1:{relay}/local
  gateway         : http://127.0.0.1:{gw}/.well-known/ohttp-gateway
  attestation     : SIMULATED (no TEE on this machine; see {base_url}/veil/attestation)

  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="unused")
  client.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "Hello"}}])
""", flush=True)
        for child in children:
            child.quiet.set()
        if not chat_wanted(args):
            why = "" if args.no_chat else " (stdin is not a terminal; --chat chats on piped lines)"
            print(f"veil up: serving{why}; stop with Ctrl-C or SIGTERM.", flush=True)
            await stop.wait()
        else:
            chat = asyncio.create_task(_chat(base_url, model, _stdin_is_tty()))
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({chat, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if chat.done():
                chat.result()
            else:
                chat.cancel()
        return 0
    finally:
        print("\nveil up: stopping…", flush=True)
        await _stop(children)
        print("veil up: stopped.", flush=True)


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except ValueError:  # stdin closed
        return False


def chat_wanted(args: argparse.Namespace) -> bool:
    """Chat on stdin when it is a terminal (or ``--chat``); otherwise serve until a signal. Without a terminal
    (``nohup veil up &``, ``< /dev/null``, a container, a systemd unit) end of input must not stop the chain."""
    if args.no_chat:
        return False
    return bool(args.chat) or _stdin_is_tty()


def run(args: argparse.Namespace) -> int:
    """Run the chain until the chat ends or Ctrl-C."""
    try:
        code = asyncio.run(_main(args))
    except KeyboardInterrupt:
        code = 130
    if any(t.name == "veil-up-stdin" and t.is_alive() for t in threading.enumerate()):
        # The stdin thread is blocked in input() and holds stdin's lock: a normal interpreter exit would abort on
        # it. Everything is stopped by now, so leave at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
