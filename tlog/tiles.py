"""C2SP tlog-tiles (c2sp.org/tlog-tiles): tile and entry-bundle paths, tile and bundle parsing, and proofs built
from tiles, so a log written by any tlog-tiles implementation (Tessera, Sunlight, Veil's own) is read unchanged.

Sans-I/O in two steps: ``*_tiles(...)`` names the tiles a proof needs (for the caller to GET), then
``*_from_tiles(...)`` builds the proof from the fetched bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import MalformedError, ProofError
from .merkle import EMPTY_ROOT, HASH_SIZE, node_hash

__all__ = [
    "TILE_WIDTH",
    "CHECKPOINT_PATH",
    "TileId",
    "tile_path",
    "entries_path",
    "entries_path_for_leaf",
    "parse_tile_path",
    "parse_tile",
    "parse_entry_bundle",
    "encode_entry_bundle",
    "tile_for_node",
    "inclusion_tiles",
    "consistency_tiles",
    "inclusion_proof_from_tiles",
    "consistency_proof_from_tiles",
    "generic_inclusion_proof",
    "generic_consistency_proof",
    "extend_levels",
    "root_from_levels",
    "tiles_to_write",
]

TILE_WIDTH = 256
TILE_HEIGHT = 8
CHECKPOINT_PATH = "checkpoint"
_MAX_U64 = (1 << 64) - 1


@dataclass(frozen=True, order=True)
class TileId:
    """A tile: level, index, and width (``0`` = full, 256 hashes; else 1..255 for a partial tile)."""

    level: int
    index: int
    width: int = 0

    def path(self) -> str:
        return tile_path(self.level, self.index, self.width)


def _encode_index(n: int) -> str:
    if n < 0 or n > _MAX_U64:
        raise MalformedError(f"tile index {n} out of range")
    s = str(n)
    s = "0" * (-len(s) % 3) + s
    groups = [s[i : i + 3] for i in range(0, len(s), 3)]
    return "/".join(["x" + g for g in groups[:-1]] + [groups[-1]])


def _suffix(width: int) -> str:
    if width == 0 or width == TILE_WIDTH:
        return ""
    if not 0 < width < TILE_WIDTH:
        raise MalformedError(f"partial tile width {width} out of range")
    return f".p/{width}"


def tile_path(level: int, index: int, width: int = 0) -> str:
    """``tile/<L>/<N>[.p/<W>]``."""
    if not 0 <= level <= 63:
        raise MalformedError(f"tile level {level} out of range")
    return f"tile/{level}/{_encode_index(index)}{_suffix(width)}"


def entries_path(index: int, width: int = 0) -> str:
    """``tile/entries/<N>[.p/<W>]``."""
    return f"tile/entries/{_encode_index(index)}{_suffix(width)}"


def entries_path_for_leaf(leaf_index: int, tree_size: int) -> str:
    """The entry bundle that holds ``leaf_index`` in a tree of ``tree_size``."""
    if not 0 <= leaf_index < tree_size:
        raise MalformedError(f"leaf {leaf_index} is outside a tree of size {tree_size}")
    n = leaf_index // TILE_WIDTH
    return entries_path(n, _width(0, n, tree_size))


def _width(level: int, index: int, tree_size: int) -> int:
    """0 for a full tile, else the partial width of tile ``index`` at ``level`` for ``tree_size``."""
    count = tree_size >> (TILE_HEIGHT * level)
    w = count - index * TILE_WIDTH
    if w <= 0:
        raise ProofError(f"tile {level}/{index} does not exist at tree size {tree_size}")
    return 0 if w >= TILE_WIDTH else w


def _parse_decimal(s: str, maxlen: int) -> int:
    if not s or len(s) > maxlen or not s.isascii() or not s.isdigit():
        raise MalformedError(f"bad number {s!r} in tile path")
    return int(s)


def parse_tile_path(level: str, index: str) -> tuple[int, int, int]:
    """``(level, index, width)`` from the two path parts after ``tile/``; width 0 = full."""
    lv = _parse_decimal(level, 2)
    if str(lv) != level or lv > 63:
        raise MalformedError(f"bad tile level {level!r}")
    width = 0
    if ".p/" in index:
        index, _, w = index.partition(".p/")
        width = _parse_decimal(w, 3)
        if str(width) != w or not 0 < width < TILE_WIDTH:
            raise MalformedError(f"bad partial width {w!r}")
    parts = index.split("/")
    digits = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if not last:
            if not part.startswith("x"):
                raise MalformedError(f"bad tile index element {part!r}")
            part = part[1:]
        if len(part) != 3 or not part.isascii() or not part.isdigit():
            raise MalformedError(f"bad tile index element {part!r}")
        digits += part
    n = int(digits)
    if n > _MAX_U64:
        raise MalformedError("tile index overflows uint64")
    return lv, n, width


def parse_tile(data: bytes, width: int = 0) -> list[bytes]:
    """The hashes of a tile (``width`` 0 = full: 256 hashes)."""
    want = TILE_WIDTH if width == 0 else width
    if len(data) != want * HASH_SIZE:
        raise MalformedError(f"tile is {len(data)} bytes, expected {want} hashes")
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def parse_entry_bundle(data: bytes, width: int = 0) -> list[bytes]:
    """The entries of a bundle (``uint16 length || bytes`` each)."""
    out: list[bytes] = []
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise MalformedError("entry bundle truncated in a length")
        n = int.from_bytes(data[i : i + 2], "big")
        if i + 2 + n > len(data):
            raise MalformedError("entry bundle truncated in an entry")
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    want = TILE_WIDTH if width == 0 else width
    if len(out) != want:
        raise MalformedError(f"entry bundle holds {len(out)} entries, expected {want}")
    return out


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    out = bytearray()
    for e in entries:
        if len(e) > 0xFFFF:
            raise MalformedError(f"entry of {len(e)} bytes exceeds 65535")
        out += len(e).to_bytes(2, "big") + e
    return bytes(out)


# --- proofs over complete subtrees -----------------------------------------------------------------------------

#: ``get(height, index)``: the root of the complete subtree of 2**height leaves starting at leaf index * 2**height.
NodeGetter = Callable[[int, int], bytes]


def _range_hash(get: NodeGetter, lo: int, hi: int) -> bytes:
    n = hi - lo
    if n & (n - 1) == 0 and lo % n == 0:
        return get(n.bit_length() - 1, lo // n)
    k = 1 << ((n - 1).bit_length() - 1)
    return node_hash(_range_hash(get, lo, lo + k), _range_hash(get, lo + k, hi))


def generic_inclusion_proof(get: NodeGetter, index: int, size: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[size]) from complete-subtree hashes."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = 1 << ((n - 1).bit_length() - 1)
        if m < k:
            return path(m, lo, lo + k) + [_range_hash(get, lo + k, hi)]
        return path(m - k, lo + k, hi) + [_range_hash(get, lo, lo + k)]

    return path(index, 0, size)


def generic_consistency_proof(get: NodeGetter, size1: int, size2: int) -> list[bytes]:
    """RFC 6962 PROOF(size1, D[size2]) from complete-subtree hashes."""
    if not 0 <= size1 <= size2:
        raise ProofError(f"no consistency proof from {size1} to {size2}")
    if size1 in (0, size2):
        return []

    def sub(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if complete else [_range_hash(get, lo, hi)]
        k = 1 << ((n - 1).bit_length() - 1)
        if m <= k:
            return sub(m, lo, lo + k, complete) + [_range_hash(get, lo + k, hi)]
        return sub(m - k, lo + k, hi, False) + [_range_hash(get, lo, lo + k)]

    return sub(size1, 0, size2, True)


def tile_for_node(height: int, index: int, tree_size: int) -> tuple[TileId, int, int]:
    """The tile that holds the hashes from which the node (height, index) is computed, and the slice of it."""
    level = height // TILE_HEIGHT
    sub = height - level * TILE_HEIGHT
    first = index << sub
    tile_index = first // TILE_WIDTH
    tid = TileId(level, tile_index, _width(level, tile_index, tree_size))
    start = first - tile_index * TILE_WIDTH
    return tid, start, start + (1 << sub)


def _recording(tree_size: int, out: set[TileId]) -> NodeGetter:
    def get(height: int, index: int) -> bytes:
        out.add(tile_for_node(height, index, tree_size)[0])
        return b"\x00" * HASH_SIZE

    return get


def inclusion_tiles(index: int, tree_size: int) -> list[TileId]:
    """The tiles needed to prove leaf ``index`` in a tree of ``tree_size``."""
    need: set[TileId] = set()
    generic_inclusion_proof(_recording(tree_size, need), index, tree_size)
    return sorted(need)


def consistency_tiles(size1: int, size2: int) -> list[TileId]:
    need: set[TileId] = set()
    generic_consistency_proof(_recording(size2, need), size1, size2)
    return sorted(need)


def _tile_getter(tiles: Mapping[TileId, bytes], tree_size: int) -> NodeGetter:
    def get(height: int, index: int) -> bytes:
        tid, a, b = tile_for_node(height, index, tree_size)
        data = tiles.get(tid)
        if data is None:
            raise ProofError(f"tile {tid.path()} was not fetched")
        hashes = parse_tile(data, tid.width)
        if b > len(hashes):
            raise ProofError(f"tile {tid.path()} is too short")
        level: list[bytes] = hashes[a:b]
        while len(level) > 1:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
        return level[0]

    return get


def inclusion_proof_from_tiles(tiles: Mapping[TileId, bytes], index: int, tree_size: int) -> list[bytes]:
    """The inclusion proof for leaf ``index`` built from fetched tiles (verify it against a signed checkpoint)."""
    return generic_inclusion_proof(_tile_getter(tiles, tree_size), index, tree_size)


def consistency_proof_from_tiles(tiles: Mapping[TileId, bytes], size1: int, size2: int) -> list[bytes]:
    return generic_consistency_proof(_tile_getter(tiles, size2), size1, size2)


# --- the writer's side ------------------------------------------------------------------------------------------


def extend_levels(levels: list[list[bytes]], new_leaf_hashes: Sequence[bytes],
                  starts: list[int] | None = None) -> None:
    """Append leaves to ``levels`` (level l = the roots of full 256**l-leaf subtrees), in place.

    ``starts[l]``, when given, is the index within level l of ``levels[l][0]``: a writer that keeps only the right
    edge (each level from the first hash of its last, partial tile on) passes it, so an append costs the new leaves,
    not the whole tree. A level this adds starts at 0 (it had no hash before)."""
    if starts is None:
        starts = [0] * len(levels)
    if len(starts) != len(levels):
        raise ValueError("extend_levels: one start per level")
    if not levels:
        levels.append([])
        starts.append(0)
    levels[0].extend(new_leaf_hashes)
    lv = 0
    while starts[lv] + len(levels[lv]) >= TILE_WIDTH:
        if len(levels) == lv + 1:
            levels.append([])
            starts.append(0)
        above = levels[lv + 1]
        while (starts[lv + 1] + len(above) + 1) * TILE_WIDTH <= starts[lv] + len(levels[lv]):
            start = (starts[lv + 1] + len(above)) * TILE_WIDTH - starts[lv]
            if start < 0:
                raise ValueError(f"extend_levels: level {lv} does not hold its last tile")
            above.append(_subtree_root(levels[lv][start : start + TILE_WIDTH]))
        lv += 1


def _subtree_root(chunk: Sequence[bytes]) -> bytes:
    """The root over a power-of-two count of hashes of one level."""
    level = list(chunk)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def root_from_levels(levels: Sequence[Sequence[bytes]], size: int, starts: Sequence[int] = ()) -> bytes:
    """The RFC 6962 root of a tree of ``size`` leaves from its tile levels (``starts`` as in ``extend_levels``).

    The tree splits into perfect subtrees, one per set bit of ``size``, largest first; a subtree of height
    8*l + r is the root of 2**r consecutive level-l hashes, all within level l's last tile (every bigger subtree
    lies before it), so only the right edge is read. The root folds them from the right (RFC 6962 MTH)."""
    if size == 0:
        return EMPTY_ROOT
    offs = list(starts) or [0] * len(levels)
    roots: list[bytes] = []
    offset = 0
    for height in range(size.bit_length() - 1, -1, -1):
        if not size >> height & 1:
            continue
        lv, r = divmod(height, TILE_HEIGHT)
        i = (offset >> (TILE_HEIGHT * lv)) - offs[lv]
        chunk = levels[lv][i : i + (1 << r)]
        if i < 0 or len(chunk) != 1 << r:
            raise ValueError(f"root_from_levels: level {lv} lacks hashes for a tree of size {size}")
        roots.append(_subtree_root(chunk))
        offset += 1 << height
    root = roots[-1]
    for left in reversed(roots[:-1]):
        root = node_hash(left, root)
    return root


def tiles_to_write(levels: Sequence[Sequence[bytes]], old_size: int, new_size: int,
                   starts: Sequence[int] = ()) -> dict[str, bytes]:
    """The tile files (path -> bytes) a log publishes when it grows from ``old_size`` to ``new_size``: every full
    tile completed on the way, and the partial tiles of ``new_size`` (``starts`` as in ``extend_levels``)."""
    offs = list(starts) or [0] * len(levels)
    out: dict[str, bytes] = {}
    level = 0
    while level < len(levels) and (new_size >> (TILE_HEIGHT * level)) > 0:
        hashes = levels[level]
        count_new = new_size >> (TILE_HEIGHT * level)
        count_old = old_size >> (TILE_HEIGHT * level)
        first = count_old // TILE_WIDTH
        last = (count_new - 1) // TILE_WIDTH
        for n in range(first, last + 1):
            lo, hi = n * TILE_WIDTH, min((n + 1) * TILE_WIDTH, count_new)
            if hi - lo == 0:
                continue
            if lo < offs[level]:
                raise ValueError(f"tiles_to_write: level {level} does not hold tile {n}")
            out[tile_path(level, n, 0 if hi - lo == TILE_WIDTH else hi - lo)] = b"".join(
                hashes[lo - offs[level] : hi - offs[level]])
        level += 1
    return out
