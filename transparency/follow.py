"""The gateway's side of the log proofs: follow a log incrementally and build, for the key configuration the
gateway serves, the proofs its evidence carries (``transparency.proofs``).

Blocking I/O through a ``fetch(path) -> bytes`` callable (run it in a worker thread from a server). Entries already
read are kept: each update fetches the checkpoint, the entry bundles of new entries only (the last partial bundle
again), and the O(log n) tiles of the proofs. The gateway holds no log key: it checks that every proof it builds
leads to the checkpoint's root (a broken mirror is noticed here, not only by clients), and clients check the rest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from tlog import (
    TILE_WIDTH,
    TileId,
    entries_path,
    inclusion_proof_from_tiles,
    inclusion_tiles,
    leaf_hash,
    parse_checkpoint,
    parse_entry_bundle,
    parse_note,
)
from tlog.errors import MalformedError, TlogError

from .client import Fetch, LogUnavailableError, fetch_tiles
from .proofs import MAX_RELEASES, InclusionProof, LogProofs
from .statements import entry_kind, parse_key_entry

__all__ = ["LogFollower"]


def _release_window(raw: bytes) -> tuple[int, int] | None:
    """A release's validity window, read without its publisher's key (the gateway has none; clients verify)."""
    try:
        obj = json.loads(parse_note(raw).text.split("\n")[1])
        nb, na = obj["not_before"], obj["not_after"]
    except (TlogError, ValueError, IndexError, KeyError, TypeError):
        return None
    return (nb, na) if isinstance(nb, int) and isinstance(na, int) else None


@dataclass
class LogFollower:
    """One log, followed from the gateway."""

    fetch: Fetch
    max_releases: int = MAX_RELEASES
    entries: list[bytes] = field(default_factory=list)
    #: key_config_sha256 -> indices of its key entries; release index -> validity window; leaf hash -> index
    _keys: dict[str, list[int]] = field(default_factory=dict)
    _releases: dict[int, tuple[int, int]] = field(default_factory=dict)
    _leaves: dict[bytes, int] = field(default_factory=dict)
    _root: bytes = b""

    def _reset(self, keep: int = 0) -> None:
        """Forget the entries from index ``keep`` on."""
        for idx in range(keep, len(self.entries)):
            raw = self.entries[idx]
            self._releases.pop(idx, None)
            if self._leaves.get(leaf_hash(raw)) == idx:
                del self._leaves[leaf_hash(raw)]
        for indices in self._keys.values():
            indices[:] = [i for i in indices if i < keep]
        del self.entries[keep:]

    def _index(self, start: int) -> None:
        for idx in range(start, len(self.entries)):
            raw = self.entries[idx]
            kind = entry_kind(raw)
            if kind == "key":
                try:
                    self._keys.setdefault(parse_key_entry(raw).key_config_sha256, []).append(idx)
                except TlogError:
                    continue  # not a valid key entry: never served
            elif kind == "release" and (window := _release_window(raw)) is not None:
                self._releases[idx] = window
                self._leaves[leaf_hash(raw)] = idx

    def _bundle(self, n: int, width: int) -> list[bytes]:
        try:
            return parse_entry_bundle(self.fetch(entries_path(n, width)), width)
        except LogUnavailableError:
            if width == 0:
                raise
            # the partial bundle of a size the log has since grown past may be gone: the full one starts alike
            return parse_entry_bundle(self.fetch(entries_path(n)))[:width]

    def update(self) -> tuple[str, int, bytes]:
        """Fetch the checkpoint and the new entries; (checkpoint text as served, size, root)."""
        raw = self.fetch("checkpoint")
        try:
            text = raw.decode()
            cp = parse_checkpoint(parse_note(text).text)
        except (UnicodeDecodeError, TlogError) as exc:
            raise MalformedError(f"the log's checkpoint is malformed: {exc}") from None
        have = len(self.entries)
        if cp.size < have or (cp.size == have and cp.root != self._root):
            self._reset()  # a smaller or different tree than the one read: read it again (clients judge it)
        keep = len(self.entries) - len(self.entries) % TILE_WIDTH  # a partial last bundle is read again
        self._reset(keep)
        for n in range(keep // TILE_WIDTH, (cp.size + TILE_WIDTH - 1) // TILE_WIDTH):
            width = min(TILE_WIDTH, cp.size - n * TILE_WIDTH)
            self.entries += self._bundle(n, 0 if width == TILE_WIDTH else width)
        self._index(keep)
        self._root = cp.root
        return text, cp.size, cp.root

    def proofs_for(self, key_config: bytes, now: float) -> LogProofs | None:
        """Update, then the proofs for the latest unexpired key entry of these exact key-configuration bytes and
        the release it names (or, naming none, the latest unexpired releases); None while no such entry is logged.
        ``ProofError`` when a proof does not lead to the checkpoint's root (the entries are read again next time)."""
        text, size, root = self.update()
        digest = hashlib.sha256(key_config).hexdigest()
        key_index: int | None = None
        for idx in reversed(self._keys.get(digest, [])):
            if parse_key_entry(self.entries[idx]).valid_at(now):
                key_index = idx
                break
        if key_index is None:
            return None
        named = parse_key_entry(self.entries[key_index]).release
        rel_indices: list[int] = []
        if named is not None and (found := self._leaves.get(bytes.fromhex(named))) is not None:
            rel_indices = [found]
        else:
            current = [i for i, (nb, na) in self._releases.items() if nb <= now < na]
            rel_indices = sorted(current)[-self.max_releases:]
        need: set[TileId] = set()
        for idx in (key_index, *rel_indices):
            need.update(inclusion_tiles(idx, size))
        tiles = fetch_tiles(self.fetch, sorted(need))

        def prove(idx: int) -> InclusionProof:
            p = InclusionProof(idx, self.entries[idx], tuple(inclusion_proof_from_tiles(tiles, idx, size)))
            p.verify(size, root)
            return p

        try:
            return LogProofs(text, prove(key_index), tuple(prove(i) for i in rel_indices))
        except TlogError:
            self._reset()
            raise
