"""The client's view of a log: fetch the signed checkpoint and the tiles a proof needs (HTTP GETs of static
tlog-tiles paths, so any tlog-tiles log is readable), check the log's signature, witness cosignatures and
consistency with the last checkpoint kept in a small state file, then derive the policy from the unexpired releases
a trusted publisher signed that are included in the log, and look up key configurations in it.

The checks are ``tlog``'s pure functions; this module only fetches (through a ``fetch(path) -> bytes`` callable,
``http_fetcher`` by default) and keeps the state file.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlog import (
    HASH_SIZE,
    TILE_WIDTH,
    Checkpoint,
    SignedCheckpoint,
    TileId,
    TlogError,
    Verifier,
    check_successor,
    consistency_proof_from_tiles,
    consistency_tiles,
    entries_path,
    inclusion_proof_from_tiles,
    inclusion_tiles,
    leaf_hash,
    open_checkpoint,
    parse_entry_bundle,
    verify_inclusion,
)
from tlog.errors import ConsistencyError, StatementError

from .proofs import MAX_CHECKPOINT_BYTES
from .statements import KeyEntry, Release, entry_kind, parse_key_entry, usable_release

__all__ = ["DEFAULT_LOG_STATE", "LogUnavailableError", "LogView", "TrustedLog", "fetch_tiles", "http_fetcher",
           "load_state", "max_bytes", "read_entries", "save_state"]

Fetch = Callable[[str], bytes]


class LogUnavailableError(TlogError):
    """The log could not be reached (no checkpoint, a missing tile)."""


#: Where ``veil proxy --log`` and ``veil attest verify --log`` keep the last checkpoint seen (rollback/fork check).
DEFAULT_LOG_STATE = Path.home() / ".config" / "veil" / "log-state.json"
#: per leaf of a tile: a 32-byte hash, or in an entry bundle a uint16 length and an entry of at most 65535 bytes
_ENTRY_BYTES = 2 + 0xFFFF


def max_bytes(path: str) -> int:
    """The most bytes the static tlog-tiles ``path`` may hold: a hash tile 8 KiB, an entry bundle 256 * (2 + 65535)
    bytes (less when partial), a checkpoint (and anything else) :data:`MAX_CHECKPOINT_BYTES`."""
    width = 0
    if path.startswith("tile/") and ".p/" in path:
        try:
            width = int(path.rsplit(".p/", 1)[1])
        except ValueError:
            width = 0
    width = width if 0 < width < TILE_WIDTH else TILE_WIDTH
    if path.startswith("tile/entries/"):
        return width * _ENTRY_BYTES
    if path.startswith("tile/"):
        return width * HASH_SIZE
    return MAX_CHECKPOINT_BYTES


def http_fetcher(base_url: str, timeout: float = 10.0, *, limit_of: Callable[[str], int] = max_bytes,
                 what: str = "log") -> Fetch:
    """GETs of ``base_url/<path>``, each answer read to at most ``limit_of(path)`` bytes (:func:`max_bytes`: a log
    claiming more is refused before it is kept), a short answer refused against its Content-Length. ``what`` names
    the source in errors."""
    base = base_url.rstrip("/") + "/"

    def fetch(path: str) -> bytes:
        url = base + path
        limit = limit_of(path)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                length = r.headers.get("Content-Length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise LogUnavailableError(f"{what} answer too large: GET {url}: {length} bytes, at most {limit}")
                parts: list[bytes] = []
                got = 0
                while got <= limit:
                    piece: bytes = r.read(limit + 1 - got)
                    if not piece:
                        break
                    parts.append(piece)
                    got += len(piece)
                if got > limit:
                    raise LogUnavailableError(f"{what} answer too large: GET {url}: more than {limit} bytes")
                return b"".join(parts)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise LogUnavailableError(f"{what} unreachable: GET {url}: {exc}") from None

    return fetch


def load_state(path: Path, origin: str) -> Checkpoint | None:
    """The last checkpoint this client accepted for ``origin`` (None at first use)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TlogError(f"log state file {path} is unreadable: {exc}") from None
    entry = data.get(origin)
    if entry is None:
        return None
    return Checkpoint(origin, int(entry["size"]), base64.b64decode(entry["root"]))


def save_state(path: Path, cp: Checkpoint, raw: bytes) -> None:
    """Keep ``cp`` as the last checkpoint of its origin, unless a larger one is kept already (verifiers run
    concurrently: the one that saves last must not take the state back). The read-modify-write holds an exclusive
    ``flock`` on ``<path>.lock``; the file is replaced whole from a temporary file of its own in the same folder.
    Raises ``TlogError`` when the kept file is unreadable (refused, never forgotten) and ``ConsistencyError`` when
    another tree of the same size was kept meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        try:
            data: Any = json.loads(path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise TlogError(f"log state file {path} is unreadable: {exc}") from None
        if not isinstance(data, dict):
            raise TlogError(f"log state file {path} is unreadable: not a JSON object")
        root = base64.b64encode(cp.root).decode()
        kept = data.get(cp.origin)
        if isinstance(kept, dict) and isinstance(kept.get("size"), int):
            if kept["size"] == cp.size and kept.get("root") != root:
                raise ConsistencyError(f"forked log: two checkpoints of size {cp.size} with different roots "
                                       f"(another was kept meanwhile in {path})")
            if kept["size"] >= cp.size:
                return
        data[cp.origin] = {"size": cp.size, "root": root, "checkpoint": raw.decode(), "seen": int(time.time())}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(data, indent=1))
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def fetch_tiles(fetch: Fetch, need: Sequence[TileId]) -> dict[TileId, bytes]:
    """The tiles ``need`` names. A partial tile of a tree the log has since grown past may be gone (C2SP lets a log
    delete partial tiles once the full one exists): then the full tile's prefix is the same hashes."""
    out: dict[TileId, bytes] = {}
    for t in need:
        try:
            out[t] = fetch(t.path())
        except LogUnavailableError:
            if t.width == 0:
                raise
            out[t] = fetch(TileId(t.level, t.index).path())[: t.width * HASH_SIZE]
    return out


def read_entries(fetch: Fetch, start: int, size: int) -> list[bytes]:
    """The entries from index ``start`` (a multiple of ``TILE_WIDTH``) up to ``size``, bundle by bundle. A partial
    bundle of a tree the log has since grown past may be gone (C2SP lets a log delete partial tiles once the full one
    exists): then the full bundle's first entries are the same."""
    out: list[bytes] = []
    for n in range(start // TILE_WIDTH, (size + TILE_WIDTH - 1) // TILE_WIDTH):
        width = min(TILE_WIDTH, size - n * TILE_WIDTH)
        if width == TILE_WIDTH:
            out += parse_entry_bundle(fetch(entries_path(n)))
            continue
        try:
            out += parse_entry_bundle(fetch(entries_path(n, width)), width)
        except LogUnavailableError:
            out += parse_entry_bundle(fetch(entries_path(n)))[:width]
    return out


@dataclass
class LogView:
    """A verified checkpoint and the entries read under it (every entry used is checked by an inclusion proof)."""

    checkpoint: SignedCheckpoint
    entries: list[bytes]
    fetch: Fetch
    _tiles: dict[TileId, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.checkpoint.checkpoint.size

    def _get_tiles(self, need: Sequence[TileId]) -> dict[TileId, bytes]:
        self._tiles.update(fetch_tiles(self.fetch, [t for t in dict.fromkeys(need) if t not in self._tiles]))
        return self._tiles

    def prove(self, index: int) -> None:
        """Raise ``ProofError`` unless entry ``index`` is included under the checkpoint."""
        size = self.size
        proof = inclusion_proof_from_tiles(self._get_tiles(inclusion_tiles(index, size)), index, size)
        verify_inclusion(index, size, leaf_hash(self.entries[index]), proof, self.checkpoint.checkpoint.root)

    def releases(self, publishers: Sequence[Verifier], now: float) -> tuple[list[Release], list[str]]:
        """Unexpired releases signed by a publisher, each proven included; and why the others were skipped."""
        out: list[Release] = []
        skipped: list[str] = []
        for i, raw in enumerate(self.entries):
            if entry_kind(raw) != "release":
                continue
            rel = usable_release(raw, publishers, now)
            if isinstance(rel, str):
                skipped.append(f"entry {i}: {rel}")
                continue
            self.prove(i)
            out.append(rel)
        return out, skipped

    def key_entry(self, key_config: bytes, now: float) -> tuple[int, KeyEntry]:
        """The logged, unexpired entry for these exact key-configuration bytes (proven included), or
        ``StatementError``: a key configuration not in the log is refused."""
        digest = hashlib.sha256(key_config).hexdigest()
        found: tuple[int, KeyEntry] | None = None
        for i, raw in enumerate(self.entries):
            if entry_kind(raw) != "key":
                continue
            try:
                entry = parse_key_entry(raw)
            except TlogError:
                continue  # a malformed key entry admits nothing; refusing the whole log for it would let one bad
                # entry in a log shared by many appenders (any tlog-tiles log) lock every client out
            if entry.key_config_sha256 == digest and entry.valid_at(now):
                found = (i, entry)
        if found is None:
            raise StatementError(f"key configuration {digest[:16]}... is not in the log at size {self.size} "
                                 "(refused: a key not in the log may be a split view)")
        self.prove(found[0])
        return found


@dataclass
class TrustedLog:
    """A log the client trusts: its verifier key, optional witnesses, and where its last checkpoint is kept."""

    log_key: Verifier
    fetch: Fetch
    state_file: Path | None = None
    witnesses: Sequence[Verifier] = ()
    min_witnesses: int = 0
    origin: str | None = None

    def open(self) -> LogView:
        """Fetch and verify the checkpoint (refusing a fork or rollback against the kept one), read the entries,
        and keep the new checkpoint."""
        raw = self.fetch("checkpoint")
        sc = open_checkpoint(raw, self.log_key, origin=self.origin, witnesses=self.witnesses,
                             min_witnesses=self.min_witnesses)
        cp = sc.checkpoint
        view = LogView(sc, [], self.fetch)
        if self.state_file is not None:
            old = load_state(self.state_file, cp.origin)
            if old is not None:
                proof: list[bytes] = []
                if 0 < old.size < cp.size:
                    proof = consistency_proof_from_tiles(view._get_tiles(consistency_tiles(old.size, cp.size)),
                                                         old.size, cp.size)
                check_successor(old, cp, proof)
        view.entries = read_entries(self.fetch, 0, cp.size)
        if self.state_file is not None:
            save_state(self.state_file, cp, raw)
        return view

    def accept(self, sc: SignedCheckpoint) -> None:
        """A checkpoint handed over by someone else (a gateway, with its proofs), its signatures already verified:
        refuse it unless it and the kept checkpoint are one tree, fetching only the O(log n) tiles of that
        consistency proof, and keep it when it is newer. An older one than kept is accepted without going back: an
        inclusion proof in a prefix of a tree this client accepted is still inclusion (a log whose *current*
        checkpoint is older is refused by :meth:`open`)."""
        if self.state_file is None:
            return
        cp = sc.checkpoint
        old = load_state(self.state_file, cp.origin)
        if old is not None and cp.size < old.size:
            proof: list[bytes] = []
            if cp.size > 0:
                proof = consistency_proof_from_tiles(fetch_tiles(self.fetch, consistency_tiles(cp.size, old.size)),
                                                     cp.size, old.size)
            try:
                check_successor(cp, old, proof)
            except ConsistencyError as exc:
                raise ConsistencyError(f"forked or rolled-back log: the gateway's checkpoint of size {cp.size} is "
                                       f"not a prefix of the kept size {old.size}: {exc}") from exc
            return
        if old is not None:
            proof = []
            if 0 < old.size < cp.size:
                proof = consistency_proof_from_tiles(fetch_tiles(self.fetch, consistency_tiles(old.size, cp.size)),
                                                     old.size, cp.size)
            check_successor(old, cp, proof)
            if cp.size == old.size:
                return
        save_state(self.state_file, cp, sc.raw)
