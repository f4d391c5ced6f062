"""C2SP checkpoints (c2sp.org/tlog-checkpoint) and Ed25519 witness cosignatures (c2sp.org/tlog-cosignature).

A checkpoint is the text of a signed note: origin, tree size (decimal, no leading zeros), base64 root, then optional
extension lines. A cosignature (type 0x04) signs ``cosignature/v1\\ntime <t>\\n`` followed by the checkpoint text.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import CheckpointError, ConsistencyError, MalformedError, ProofError, SignatureError
from .merkle import HASH_SIZE, verify_consistency
from .note import ALG_COSIGNATURE_V1, Note, Signature, Signer, Verifier, open_note, parse_note, sign_note

__all__ = [
    "Checkpoint",
    "SignedCheckpoint",
    "Cosigner",
    "parse_checkpoint",
    "open_checkpoint",
    "sign_checkpoint",
    "cosignature_message",
    "verify_cosignature",
    "cosign",
    "check_successor",
]


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse a checkpoint's note text (not its signatures)."""
    if not text.endswith("\n"):
        raise MalformedError("malformed checkpoint: text must end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedError("malformed checkpoint: fewer than three lines")
    origin, size_s, root_s, *ext = lines
    if not origin:
        raise MalformedError("malformed checkpoint: empty origin")
    if not size_s.isascii() or not size_s.isdigit() or (len(size_s) > 1 and size_s[0] == "0"):
        raise MalformedError(f"malformed checkpoint: tree size {size_s!r}")
    size = int(size_s)
    if size >= 1 << 64:
        raise MalformedError("malformed checkpoint: tree size overflows uint64")
    try:
        root = base64.b64decode(root_s, validate=True)
    except binascii.Error as exc:
        raise MalformedError("malformed checkpoint: root is not base64") from exc
    if len(root) != HASH_SIZE:
        raise MalformedError(f"malformed checkpoint: root is {len(root)} bytes")
    if any(not line for line in ext):
        raise MalformedError("malformed checkpoint: empty extension line")
    return Checkpoint(origin, size, root, tuple(ext))


@dataclass(frozen=True)
class Cosigner:
    """A witness's Ed25519 cosignature key (type 0x04)."""

    verifier: Verifier

    @property
    def name(self) -> str:
        return self.verifier.name


@dataclass(frozen=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    note: Note
    #: names of the witnesses whose cosignatures verified, with their timestamps
    witnesses: tuple[tuple[str, int], ...] = ()

    @property
    def raw(self) -> bytes:
        return self.note.serialize()


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    return f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint_text.encode()


def verify_cosignature(checkpoint_text: str, sig: Signature, witness: Verifier) -> int | None:
    """The timestamp if ``sig`` is a valid cosignature by ``witness``; ``None`` if the line is not this witness's
    (other name or key id, or the wrong size); ``SignatureError`` if it is this witness's and does not verify."""
    if witness.alg != ALG_COSIGNATURE_V1:
        raise SignatureError(f"witness key {witness.name} is not a cosignature (type 0x04) key")
    if sig.name != witness.name or sig.key_id != witness.key_id or len(sig.payload) != 72:
        return None
    ts = int.from_bytes(sig.payload[:8], "big")
    if not witness.verify(cosignature_message(checkpoint_text, ts), sig.payload[8:]):
        raise SignatureError(f"invalid cosignature for witness {witness.name}+{witness.key_id:08x}")
    return ts


def cosign(checkpoint_text: str, signer: Signer, timestamp: int) -> Signature:
    """A witness's cosignature line for ``checkpoint_text`` (signer's key used as a type 0x04 key)."""
    pub = signer.verifier.public_key
    v = Verifier.from_public_key(signer.name, pub, ALG_COSIGNATURE_V1)
    sig = signer.sign(cosignature_message(checkpoint_text, timestamp))
    return Signature(signer.name, v.key_id, timestamp.to_bytes(8, "big") + sig)


def open_checkpoint(
    data: bytes | str,
    log_key: Verifier,
    *,
    origin: str | None = None,
    witnesses: Sequence[Verifier] = (),
    min_witnesses: int = 0,
) -> SignedCheckpoint:
    """Verify the log's signature, parse the checkpoint, check its origin, and count valid witness cosignatures."""
    note = open_note(data, [log_key])
    cp = parse_checkpoint(note.text)
    want = origin if origin is not None else log_key.name
    if cp.origin != want:
        raise CheckpointError(f"checkpoint origin {cp.origin!r} is not the expected {want!r}")
    seen: list[tuple[str, int]] = []
    for w in witnesses:
        for sig in note.unverified:
            ts = verify_cosignature(note.text, sig, w)
            if ts is not None:
                seen.append((w.name, ts))
                break
    if len(seen) < min_witnesses:
        raise CheckpointError(f"checkpoint has {len(seen)} valid witness cosignatures, {min_witnesses} required")
    return SignedCheckpoint(cp, note, tuple(seen))


def sign_checkpoint(cp: Checkpoint, log_signer: Signer, cosignatures: Iterable[Signature] = ()) -> bytes:
    """The signed checkpoint note (log signature first, then any cosignatures)."""
    signed = parse_note(sign_note(cp.text(), [log_signer]))
    return Note(signed.text, signed.signatures + tuple(cosignatures)).serialize()


def check_successor(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """Refuse ``new`` unless it extends ``old``: same origin, not smaller (rollback), same root at equal size (fork),
    and a valid consistency proof otherwise."""
    if old.origin != new.origin:
        raise CheckpointError(f"checkpoint origin {new.origin!r} differs from the kept {old.origin!r}")
    if new.size < old.size:
        raise ConsistencyError(f"rolled-back checkpoint: size {new.size} is older than the kept size {old.size}")
    if new.size == old.size:
        if new.root != old.root:
            raise ConsistencyError(f"forked log: two checkpoints of size {new.size} with different roots")
        return
    if old.size == 0:
        return
    try:
        verify_consistency(old.size, new.size, old.root, new.root, proof)
    except ProofError as exc:
        raise ConsistencyError(
            f"forked log: size {new.size} is not consistent with the kept size {old.size}: {exc}"
        ) from exc
