"""``veil relay --workers N``: N worker processes on one address, and the supervisor that keeps them.

* Sockets: the supervisor binds the address once with ``SO_REUSEPORT`` and never listens on it (it only holds the
  port, so nobody else takes it while a worker restarts, and ``--listen HOST:0`` gets one port for all); each
  worker binds its own listening socket there with ``SO_REUSEPORT``, and the kernel spreads new connections over
  the listening ones (by a hash of the addresses and ports). One socket per worker rather than one shared socket:
  no thundering herd, no one busy worker taking most accepts.
* Workers are fresh interpreters (``python -m proxy.relay.workers``), not forks: ``PROMETHEUS_MULTIPROC_DIR`` is in
  their environment before ``prometheus_client`` is imported, and nothing of the supervisor (event loop, random
  keys, SQLite connections) is inherited. Each is in a process group of its own and gets SIGTERM if the
  supervisor dies (PR_SET_PDEATHSIG): no orphans. Each says "ready" on a pipe once it listens.
* Supervision: a worker that fails before its first "ready" stops the relay (exit status 1: a broken set-up would
  fail again); one that dies later is restarted after a back-off (1 s, doubling to 30 s; back to 1 s once a worker
  has run a minute), its shared limit counts and its live metrics forgotten first, while the others go on serving
  (a supervisor outside would otherwise restart all of them and cut every client's stream). SIGTERM/SIGINT to the
  supervisor: SIGTERM to every worker, each finishes its requests within ``--shutdown-timeout``, then it exits 0.
* Shared between workers: the per-address limits (:mod:`.shared`), the metrics (multiprocess files), the spent-token
  store (its own SQLite file or Redis, as replicas share it). Per worker: the key and evidence cache and the
  health checks of replicas (each is correct on its own; the gateway sees N times the key fetches).
* The shared files live in ``/dev/shm/veil-relay-<supervisor pid>-<random>`` (mode 0700; it holds the configuration), removed when
  the supervisor stops. One killed outright (SIGKILL) cannot remove it, so each supervisor, on start, removes the
  directories of this user whose supervisor is gone: each holds an exclusive ``flock`` on its directory's
  ``supervisor.lock`` while it runs (the kernel drops it when the process dies, whatever its pid namespace).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import selectors
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Final

from .config import RelayConfig
from .shared import WORKER_ENV, WorkerSpec, clear_region, create_table

log = logging.getLogger("veil.relay")

BACKOFF_START: Final = 1.0
BACKOFF_MAX: Final = 30.0
#: a worker that ran this long resets the back-off
STABLE_AFTER: Final = 60.0
_TUPLES: Final = ("trusted_proxies", "cors_origins", "token_origin")
#: the supervisor's shared directory: ``veil-relay-<supervisor pid>-<random>``
_DIR_RE: Final = re.compile(r"veil-relay-(\d+)-[A-Za-z0-9_]+")
#: where a shared directory is made before its lock is held (not matched by _DIR_RE)
_STAGING: Final = ".veil-relay-new-"
#: held (flock, exclusive) by the supervisor for as long as it runs
_LOCK: Final = "supervisor.lock"
#: a directory without its lock file (its supervisor died right after creating it) is left alone this long
_UNLOCKED_GRACE: Final = 60.0


@dataclass
class _Worker:
    index: int
    popen: subprocess.Popen[bytes] | None = None
    ready_fd: int = -1
    ready: bool = False
    ever_ready: bool = False
    started: float = 0.0
    backoff: float = BACKOFF_START
    restart_at: float | None = None


def config_to_dict(config: RelayConfig) -> dict[str, Any]:
    d = asdict(config)
    d["gateways"] = {k: list(v) if not isinstance(v, str) else v for k, v in config.gateways.items()}
    return d


def config_from_dict(d: dict[str, Any]) -> RelayConfig:
    d = dict(d)
    for name in _TUPLES:
        d[name] = tuple(d[name])
    return RelayConfig(**d)


def reserve(host: str, port: int) -> socket.socket:
    """Bind (never listen) ``host:port`` with SO_REUSEPORT: the port stays the workers' while one restarts."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(addr)
    return sock


def shared_root() -> str:
    """Where supervisors put their shared directories: ``/dev/shm`` (memory, not disk), else the temp directory."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def make_shared_dir(root: str) -> tuple[Path, int]:
    """A fresh ``veil-relay-<pid>-<random>`` directory (0700) under ``root`` and the fd of its lock file, locked
    exclusively for as long as this process keeps the fd (close it after removing the directory).

    It is made under a name no supervisor scans and renamed once its lock is held: another supervisor's
    :func:`remove_stale_dirs` never sees it between its creation and its lock, when it would look abandoned."""
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=root))
    fd = os.open(staging / _LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    path = staging.with_name(f"veil-relay-{os.getpid()}-{staging.name[len(_STAGING):]}")
    os.rename(staging, path)
    return path, fd


def _owner_gone(path: Path, pid: int, mtime: float) -> bool:
    """Whether the supervisor of ``path`` is gone: its lock can be taken; or, with no lock file, the pid in the
    name is not a live process (of this pid namespace) and the directory is older than the grace period."""
    try:
        fd = os.open(path / _LOCK, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        if time.time() - mtime < _UNLOCKED_GRACE:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's
            return False
        return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its supervisor is alive
        return False
    finally:
        os.close(fd)  # drops the lock taken, if any
    return True


def remove_stale_dirs(root: str) -> list[str]:
    """Remove the ``veil-relay-<pid>-<random>`` directories under ``root`` that this user owns and whose supervisor is
    gone (killed outright, so it could not remove its own); their names. Nothing of another user, no link, no
    directory of a running supervisor is touched."""
    removed = []
    uid = os.getuid()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for entry in entries:
        m = _DIR_RE.fullmatch(entry.name)
        if m is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        if _owner_gone(Path(entry.path), int(m.group(1)), st.st_mtime):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.name)
    return removed


class Supervisor:
    """Starts, watches and stops the workers (see the module's docstring)."""

    def __init__(self, config: RelayConfig, *, host: str, port: int, workers: int, log_level: str,
                 idle_timeout: float, shutdown_timeout: float) -> None:
        self.shutdown_timeout = shutdown_timeout
        self._reserved = reserve(host, port)
        self.port: int = self._reserved.getsockname()[1]
        root = shared_root()
        if stale := remove_stale_dirs(root):  # left by supervisors killed outright
            log.warning("removed %d shared directories of relay supervisors that are gone", len(stale))
        self.dir, self._lock_fd = make_shared_dir(root)
        self.metrics_dir = self.dir / "metrics"
        self.metrics_dir.mkdir()
        self.table = str(self.dir / "limits")
        create_table(self.table, workers)
        (self.dir / "worker.json").write_text(json.dumps({
            "config": config_to_dict(config), "host": host, "port": self.port, "log_level": log_level,
            "idle_timeout": idle_timeout, "shutdown_timeout": shutdown_timeout}))
        self.workers = [_Worker(i) for i in range(workers)]
        self._stop: int | None = None
        self._sel = selectors.DefaultSelector()

    # -- workers

    def _spawn(self, w: _Worker) -> None:
        from veil_cli import dies_with_me

        r, wfd = os.pipe()
        spec = WorkerSpec(index=w.index, shared_path=self.table, ready_fd=wfd)
        env = {**os.environ, WORKER_ENV: spec.to_env(), "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
               "_VEIL_RELAY_WORKER_SETUP": str(self.dir / "worker.json")}
        try:
            w.popen = subprocess.Popen([sys.executable, "-m", "proxy.relay.workers"], env=env, pass_fds=(wfd,),
                                       process_group=0, preexec_fn=dies_with_me())
        finally:
            os.close(wfd)
        w.ready_fd, w.ready, w.started, w.restart_at = r, False, time.monotonic(), None
        self._sel.register(r, selectors.EVENT_READ, w)

    def _ready_event(self, w: _Worker) -> None:
        try:
            data = os.read(w.ready_fd, 64)
        except OSError:
            data = b""
        if data:
            w.ready = w.ever_ready = True
        else:  # the worker closed its end: it exited (reaped below)
            self._sel.unregister(w.ready_fd)
            os.close(w.ready_fd)
            w.ready_fd = -1

    def _reap(self, w: _Worker) -> int | None:
        """The exit status of ``w`` if it has exited (its shared counts and live metrics are forgotten then)."""
        if w.popen is None or (code := w.popen.poll()) is None:
            return None
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(w.popen.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
        clear_region(self.table, w.index)
        if w.ready_fd >= 0:
            self._sel.unregister(w.ready_fd)
            os.close(w.ready_fd)
            w.ready_fd = -1
        w.popen = None
        return code

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop = signum

    def run(self) -> int:
        """Until SIGTERM/SIGINT (0) or a worker that could not start (1)."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, lambda s, f: None)  # wakes select via the fd
        self._sel.register(wake_r, selectors.EVENT_READ, None)
        announced = False
        try:
            for w in self.workers:
                self._spawn(w)
            while self._stop is None:
                now = time.monotonic()
                due = [w.restart_at for w in self.workers if w.restart_at is not None]
                timeout = max(0.0, min(due) - now) if due else None
                for key, _ in self._sel.select(timeout):
                    if key.data is None:
                        while True:
                            try:
                                if not os.read(wake_r, 512):
                                    break
                            except BlockingIOError:
                                break
                    else:
                        self._ready_event(key.data)
                if not announced and all(w.ready for w in self.workers):
                    announced = True
                    print(f"veil relay: {len(self.workers)} workers listening on port {self.port} (SO_REUSEPORT)",
                          flush=True)
                for w in self.workers:
                    status = self._reap(w)
                    if status is None:
                        continue
                    if not w.ever_ready:
                        print(f"veil relay: worker {w.index} exited with status {status} before it was ready; "
                              "stopping", file=sys.stderr, flush=True)
                        return 1
                    ran = time.monotonic() - w.started
                    if ran >= STABLE_AFTER:
                        w.backoff = BACKOFF_START
                    w.restart_at = time.monotonic() + w.backoff
                    log.warning("relay worker %d exited with status %s after %.0f s; restarting it in %.0f s",
                                w.index, status, ran, w.backoff)
                    w.backoff = min(w.backoff * 2, BACKOFF_MAX)
                now = time.monotonic()
                for w in self.workers:
                    if w.restart_at is not None and w.restart_at <= now and w.popen is None:
                        self._spawn(w)
            return 0
        finally:
            self._stop_all()
            self._sel.close()
            signal.set_wakeup_fd(old_wakeup)
            for s, h in handlers.items():
                signal.signal(s, h)
            os.close(wake_r)
            os.close(wake_w)
            self._reserved.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            os.close(self._lock_fd)

    def _stop_all(self) -> None:
        """SIGTERM to every worker; SIGKILL to any still there after ``shutdown_timeout`` + 5 s."""
        alive = [w.popen for w in self.workers if w.popen is not None and w.popen.poll() is None]
        for p in alive:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + 5.0
        for p in alive:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for w in self.workers:
            if w.popen is not None:
                w.popen.wait()


def worker_main() -> int:
    """One worker (``python -m proxy.relay.workers``, started by :class:`Supervisor` only)."""
    from veil_cli import install_event_loop

    from ..logfilter import setup_logging
    from .app import create_app
    from .limits import serve
    from .state import STATE

    spec = WorkerSpec.from_env()
    setup_path = os.environ.get("_VEIL_RELAY_WORKER_SETUP")
    if spec is None or not setup_path:
        raise SystemExit("proxy.relay.workers: started by `veil relay --workers N` only")
    setup = json.loads(Path(setup_path).read_text())
    setup_logging(setup["log_level"], "relay")
    install_event_loop()
    config = config_from_dict(setup["config"])
    try:
        app = create_app(config, worker=spec)
    except (OSError, sqlite3.Error) as exc:  # the spent-token store's file cannot be opened
        raise SystemExit(f"veil relay: --spent-store {config.spent_store}: {exc}") from None

    def ready() -> None:
        os.write(spec.ready_fd, b"1")
        os.close(spec.ready_fd)

    serve(app, setup["host"], int(setup["port"]), shutdown_timeout=float(setup["shutdown_timeout"]),
          idle_timeout=float(setup["idle_timeout"]), limits=app[STATE].limits, reuse_port=True, on_ready=ready)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
