"""The gateway's side of the log proofs: follow a log incrementally and build, for the key configuration the
gateway serves, the proofs its evidence carries (``transparency.proofs``).

Blocking I/O through a ``fetch(path) -> bytes`` callable (run it in a worker thread from a server). Entries already
read are kept: each update fetches the checkpoint, the entry bundles of new entries only (the last partial bundle
again, at most ``max_bundles`` per update: a large log is read over several rounds), and the O(log n) tiles of the
proofs. It checks that every proof it builds leads to the checkpoint's root (a broken mirror is noticed here, not
only by clients), and clients check the rest. Given the log's key (``veil gateway --transparency-log-key``), it
believes a checkpoint's size only once the log's signature on it verifies; given publishers
(``--transparency-publisher``), the releases it attaches when the key entry names none are theirs only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from tlog import (
    TILE_WIDTH,
    TileId,
    Verifier,
    inclusion_proof_from_tiles,
    inclusion_tiles,
    leaf_hash,
    open_checkpoint,
    parse_checkpoint,
    parse_note,
)
from tlog.errors import MalformedError, StatementError, TlogError

from .client import Fetch, fetch_tiles, read_entries
from .proofs import MAX_RELEASES, InclusionProof, LogProofs
from .statements import KeyEntry, entry_kind, open_release, parse_key_entry, release_window

__all__ = ["MAX_BUNDLES_PER_UPDATE", "LogFollower"]

#: entry bundles (256 entries each) read per update: a log claiming a huge size is read a bounded part at a time
MAX_BUNDLES_PER_UPDATE = 64


def _release_window(raw: bytes) -> tuple[int, int] | None:
    """A release's validity window, read without its publisher's key (the gateway has none; clients verify), or None
    when the entry is not a release the clients would parse (:func:`statements.release_window`)."""
    try:
        return release_window(raw)
    except TlogError:
        return None


@dataclass
class LogFollower:
    """One log, followed from the gateway."""

    fetch: Fetch
    max_releases: int = MAX_RELEASES
    #: the log's verifier key: checkpoints are used only once its signature verifies (None: unsigned size believed)
    log_key: Verifier | None = None
    #: publishers whose releases are attached when the key entry names none (empty: any publisher's)
    publishers: Sequence[Verifier] = ()
    max_bundles: int = MAX_BUNDLES_PER_UPDATE
    entries: list[bytes] = field(default_factory=list)
    #: key_config_sha256 -> indices of its key entries; release index -> validity window (of the releases that may
    #: be attached unnamed); leaf hash -> index (of every release, so a named one is found whoever signed it)
    _keys: dict[str, list[int]] = field(default_factory=dict)
    _releases: dict[int, tuple[int, int]] = field(default_factory=dict)
    _leaves: dict[bytes, int] = field(default_factory=dict)
    _root: bytes = b""
    _size: int = 0

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
                self._leaves[leaf_hash(raw)] = idx
                if self.publishers:
                    try:
                        open_release(raw, self.publishers)  # the publisher's signature; the window is the same
                    except StatementError:
                        continue  # another publisher's: attached only when a key entry names it
                self._releases[idx] = window

    @property
    def behind(self) -> bool:
        """Whether the last update left entries of its checkpoint unread (the next one reads on)."""
        return len(self.entries) < self._size

    def update(self) -> tuple[str, int, bytes]:
        """Fetch the checkpoint and the new entries (at most ``max_bundles`` bundles of them); (checkpoint text as
        served, size, root)."""
        raw = self.fetch("checkpoint")
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            raise MalformedError("the log's checkpoint is malformed: not UTF-8") from None
        if self.log_key is not None:
            # signature errors propagate as themselves: a checkpoint not signed by the log's key is never believed
            cp = open_checkpoint(text, self.log_key).checkpoint
        else:
            try:
                cp = parse_checkpoint(parse_note(text).text)
            except TlogError as exc:
                raise MalformedError(f"the log's checkpoint is malformed: {exc}") from None
        have = len(self.entries)
        if cp.size < have or (cp.size == have and cp.root != self._root):
            self._reset()  # a smaller or different tree than the one read: read it again (clients judge it)
        keep = len(self.entries) - len(self.entries) % TILE_WIDTH  # a partial last bundle is read again
        self._reset(keep)
        first = keep // TILE_WIDTH
        self.entries += read_entries(self.fetch, keep, min(cp.size, (first + self.max_bundles) * TILE_WIDTH))
        self._index(keep)
        # the root of the entries read, once they are the whole tree (a same-size, other-root tree is read again)
        self._size = cp.size
        self._root = cp.root if len(self.entries) == cp.size else b""
        return text, cp.size, cp.root

    def proofs_for(self, key_config: bytes, now: float) -> LogProofs | None:
        """Update, then the proofs for the latest unexpired key entry of these exact key-configuration bytes and
        the release it names (or, naming none, the latest unexpired releases, of ``publishers`` when given); None
        while no such entry is logged (or read: a log read over several updates is searched as far as read).
        ``ProofError`` when a proof does not lead to the checkpoint's root (the entries are read again next time)."""
        text, size, root = self.update()
        digest = hashlib.sha256(key_config).hexdigest()
        found_key: tuple[int, KeyEntry] | None = None
        for idx in reversed(self._keys.get(digest, [])):
            if (entry := parse_key_entry(self.entries[idx])).valid_at(now):
                found_key = idx, entry
                break
        if found_key is None:
            return None
        key_index, key_entry = found_key
        named = key_entry.release
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
