"""The log proofs a gateway serves with its evidence, so a client checks the log in the same fetch, offline.

The evidence bundle's unsigned attachments (``certs``) carry them under :data:`CERT_KEY` as one JSON string (the
browser client reads exactly this)::

    {"checkpoint": "<the signed-note checkpoint, exactly as served at /checkpoint>",
     "key": {"index": N, "entry": "<base64 of the exact entry bytes>", "proof": ["<base64 32-byte hash>", ...]},
     "releases": [{"index": N, "entry": "<base64>", "proof": [...]}, ...]}

Each proof is an RFC 9162 inclusion proof under the checkpoint's size and root. Nothing in it needs trusting the
gateway: the checkpoint is signed by the log's key, every entry is proven included, every release is signed by a
publisher the client trusts. The gateway can only leave things out, which refuses its own keys (as it always can).

Sans-I/O: :func:`verify_proofs` checks everything but the consistency with the client's kept checkpoint, which
needs the client's state (``transparency.client.TrustedLog.accept``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from tlog import HASH_SIZE, SignedCheckpoint, Verifier, leaf_hash, open_checkpoint, verify_inclusion
from tlog.errors import ProofError, StatementError

from .statements import KeyEntry, Release, entry_kind, parse_key_entry, usable_release

__all__ = ["CERT_KEY", "MAX_ATTACHMENT_CHARS", "MAX_RELEASES", "AttachmentError", "InclusionProof", "LogProofs",
           "NoReleaseInProofs", "ProvenEntries", "verify_proofs"]

#: the bundle ``certs`` key that carries the proofs
CERT_KEY: Final = "veil_log"
#: bounds on what a client parses (the relay passes bundles of at most 1 MiB in all)
MAX_ATTACHMENT_CHARS: Final = 512 * 1024
MAX_RELEASES: Final = 16
#: the most bytes (characters, in the attachment) of a checkpoint note: a few signature lines; the log client
#: reads at most as many
MAX_CHECKPOINT_BYTES: Final = 16 * 1024
_MAX_ENTRY: Final = 0xFFFF
#: a proof in a tree of at most 2**64 leaves has at most 64 hashes
_MAX_PROOF: Final = 64


class AttachmentError(ProofError):
    """A ``veil_log`` attachment that breaks the format: refused like a proof that does not verify."""


class NoReleaseInProofs(StatementError):
    """The proofs verify (checkpoint, inclusion) but carry no unexpired release of a trusted publisher: the log may
    still hold one (a client that can read the log reads it whole)."""


@dataclass(frozen=True)
class InclusionProof:
    """One log entry, its index and its inclusion proof."""

    index: int
    entry: bytes
    proof: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "entry": base64.b64encode(self.entry).decode(),
                "proof": [base64.b64encode(h).decode() for h in self.proof]}

    def verify(self, size: int, root: bytes) -> None:
        """``ProofError`` unless the entry is at ``index`` in the tree (size, root)."""
        if self.index >= size:
            raise ProofError(f"entry index {self.index} is outside the checkpoint's tree of size {size}")
        verify_inclusion(self.index, size, leaf_hash(self.entry), self.proof, root)


@dataclass(frozen=True)
class LogProofs:
    """The parsed attachment."""

    checkpoint: str
    key: InclusionProof
    releases: tuple[InclusionProof, ...] = ()

    def encode(self) -> str:
        if len(self.releases) > MAX_RELEASES:
            raise AttachmentError(f"at most {MAX_RELEASES} releases travel with the evidence")
        text = json.dumps({"checkpoint": self.checkpoint, "key": self.key.to_json(),
                           "releases": [r.to_json() for r in self.releases]}, separators=(",", ":"))
        if len(text) > MAX_ATTACHMENT_CHARS:
            raise AttachmentError(f"log proofs of {len(text)} characters exceed {MAX_ATTACHMENT_CHARS}")
        return text

    @classmethod
    def parse(cls, text: str) -> LogProofs:
        """Parse strictly (unknown fields, wrong types, oversized values: ``AttachmentError``)."""
        if len(text) > MAX_ATTACHMENT_CHARS:
            raise AttachmentError(f"veil_log attachment of {len(text)} characters exceeds {MAX_ATTACHMENT_CHARS}")
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise AttachmentError(f"veil_log attachment is not JSON: {exc}") from None
        except RecursionError:  # '[' * 100000: nested deeper than the parser goes
            raise AttachmentError("veil_log attachment is nested too deeply") from None
        _fields(obj, {"checkpoint", "key", "releases"}, "veil_log")
        cp = obj["checkpoint"]
        if not isinstance(cp, str) or not cp or len(cp) > MAX_CHECKPOINT_BYTES:
            raise AttachmentError(f"veil_log: checkpoint must be a note of at most {MAX_CHECKPOINT_BYTES} "
                                  "characters")
        rels = obj["releases"]
        if not isinstance(rels, list) or len(rels) > MAX_RELEASES:
            raise AttachmentError(f"veil_log: releases must be a list of at most {MAX_RELEASES}")
        return cls(cp, _proof(obj["key"], "key"), tuple(_proof(r, f"releases[{i}]") for i, r in enumerate(rels)))


def _fields(obj: Any, want: set[str], where: str) -> None:
    if not isinstance(obj, dict) or set(obj) != want:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise AttachmentError(f"{where} must be an object with exactly {sorted(want)}, got {got}")


def _b64(v: Any, where: str) -> bytes:
    if not isinstance(v, str):
        raise AttachmentError(f"{where} must be a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise AttachmentError(f"{where} is not base64") from None


def _proof(obj: Any, where: str) -> InclusionProof:
    _fields(obj, {"index", "entry", "proof"}, f"veil_log.{where}")
    index, hashes = obj["index"], obj["proof"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 1 << 64:
        raise AttachmentError(f"veil_log.{where}.index must be an integer 0..2^64-1")
    if not isinstance(hashes, list) or len(hashes) > _MAX_PROOF:
        raise AttachmentError(f"veil_log.{where}.proof must be a list of at most {_MAX_PROOF} hashes")
    if not isinstance(obj["entry"], str) or len(obj["entry"]) > (_MAX_ENTRY + 2) // 3 * 4:
        raise AttachmentError(f"veil_log.{where}.entry must be base64 of at most {_MAX_ENTRY} bytes")
    entry = _b64(obj["entry"], f"veil_log.{where}.entry")
    proof = tuple(_b64(h, f"veil_log.{where}.proof[{i}]") for i, h in enumerate(hashes))
    if any(len(h) != HASH_SIZE for h in proof):
        raise AttachmentError(f"veil_log.{where}.proof hashes must be {HASH_SIZE} bytes")
    return InclusionProof(index, entry, proof)


@dataclass(frozen=True)
class ProvenEntries:
    """What a verified attachment proves: a signed checkpoint, the gateway's key entry and the usable releases."""

    checkpoint: SignedCheckpoint
    key_index: int
    key_entry: KeyEntry
    releases: tuple[Release, ...]
    skipped: tuple[str, ...]

    @property
    def size(self) -> int:
        return self.checkpoint.checkpoint.size


def verify_proofs(proofs: LogProofs, key_config: bytes, *, log_key: Verifier, publishers: Sequence[Verifier],
                  now: float, witnesses: Sequence[Verifier] = (), min_witnesses: int = 0,
                  origin: str | None = None) -> ProvenEntries:
    """Check, in this order, the checkpoint (log signature, origin, witness cosignatures), every inclusion proof,
    the releases (signed by a publisher, unexpired) and the key entry (these exact key-configuration bytes,
    unexpired). Raises the ``tlog`` errors the full-log path raises for the same failure."""
    sc = open_checkpoint(proofs.checkpoint, log_key, origin=origin, witnesses=witnesses, min_witnesses=min_witnesses)
    size, root = sc.checkpoint.size, sc.checkpoint.root
    for p in (proofs.key, *proofs.releases):
        p.verify(size, root)
    releases: list[Release] = []
    skipped: list[str] = []
    for p in proofs.releases:
        rel = usable_release(p.entry, publishers, now)
        if isinstance(rel, str):
            skipped.append(f"entry {p.index}: {rel}")
            continue
        releases.append(rel)
    if not releases:
        detail = f" ({'; '.join(skipped)})" if skipped else ""
        raise NoReleaseInProofs(f"no unexpired release signed by the publisher is in the log at size {size}{detail} "
                                "(among the releases the gateway's proofs carry)")
    digest = hashlib.sha256(key_config).hexdigest()
    entry = parse_key_entry(proofs.key.entry) if entry_kind(proofs.key.entry) == "key" else None
    if entry is None or entry.key_config_sha256 != digest or not entry.valid_at(now):
        why = ("its proofs carry no key entry" if entry is None else
               "its proofs carry the entry of another key configuration" if entry.key_config_sha256 != digest else
               f"the entry at index {proofs.key.index} is outside its validity window")
        raise StatementError(f"key configuration {digest[:16]}... is not in the log at size {size} ({why}; "
                             "refused: a key not in the log may be a split view)")
    return ProvenEntries(sc, proofs.key.index, entry, tuple(releases), tuple(skipped))
