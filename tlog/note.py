"""C2SP signed notes (c2sp.org/signed-note, as golang.org/x/mod/sumdb/note implements them) with Ed25519 keys.

A note is UTF-8 text ending in ``\\n``, a blank line, then signature lines ``— <name> <base64(key id[4] || sig)>``.
Key ids are ``SHA-256(name || 0x0A || type || public key)[:4]``; verifier keys are ``name+hexid+base64(type||key)``
and signer keys (Go's encoding) ``PRIVATE+KEY+name+hexid+base64(0x01||seed)``.

``open_note`` follows ``note.Open``: lines from unknown (name, id) pairs are kept as unverified; a known pair whose
signature fails rejects the note; no verified signature rejects it; malformed syntax rejects it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import MalformedError, NoVerifiableSignatureError, SignatureError, UnknownKeyError

__all__ = [
    "ALG_ED25519",
    "ALG_COSIGNATURE_V1",
    "MAX_SIGNATURES",
    "Signature",
    "Note",
    "Verifier",
    "Signer",
    "key_id",
    "is_valid_name",
    "parse_verifier_key",
    "parse_note",
    "open_note",
    "sign_note",
    "generate_signer",
]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
#: Go's cap on signature lines; C2SP asks verifiers to accept at least 16.
MAX_SIGNATURES = 100
_DASH = "\u2014 "


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """``SHA-256(name || 0x0A || alg || public key)[:4]`` as a big-endian integer."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def is_valid_name(name: str) -> bool:
    """Non-empty, no Unicode space, no ``+`` (C2SP signed-note key names)."""
    if not name or "+" in name:
        return False
    return not any(ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp", "Cc") for ch in name)


@dataclass(frozen=True)
class Signature:
    """One signature line: the key name, the 4-byte key id, and the payload after the id (signature bytes; for a
    cosignature the timestamp and the signature)."""

    name: str
    key_id: int
    payload: bytes

    def line(self) -> str:
        blob = self.key_id.to_bytes(4, "big") + self.payload
        return f"{_DASH}{self.name} {base64.b64encode(blob).decode()}\n"


@dataclass(frozen=True)
class Note:
    """A parsed note: its text (ends in ``\\n``), verified and unverified signatures."""

    text: str
    signatures: tuple[Signature, ...] = ()
    verified: tuple[Signature, ...] = ()
    unverified: tuple[Signature, ...] = field(default=())

    def serialize(self) -> bytes:
        return (self.text + "\n" + "".join(s.line() for s in self.signatures)).encode()


@dataclass(frozen=True)
class Verifier:
    """An Ed25519 verifier key (type 0x01) for note signatures."""

    name: str
    key_id: int
    public_key: bytes
    alg: int = ALG_ED25519

    def vkey(self) -> str:
        blob = base64.b64encode(bytes([self.alg]) + self.public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{blob}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes, alg: int = ALG_ED25519) -> Verifier:
        if not is_valid_name(name):
            raise UnknownKeyError(f"invalid key name {name!r}")
        if len(public_key) != 32:
            raise UnknownKeyError(f"Ed25519 public key is {len(public_key)} bytes, not 32")
        return cls(name, key_id(name, alg, public_key), public_key, alg)


def parse_verifier_key(vkey: str) -> Verifier:
    """Parse ``name+hexid+base64(type||key)``; raise ``UnknownKeyError`` on any mismatch."""
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise UnknownKeyError("verifier key must be name+hash+key")
    name, hex_id, b64 = parts
    if not is_valid_name(name) or len(hex_id) != 8 or hex_id.lower() != hex_id:
        raise UnknownKeyError(f"malformed verifier key for {name!r}")
    try:
        kid = int(hex_id, 16)
        blob = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise UnknownKeyError(f"malformed verifier key for {name!r}") from exc
    if not blob or blob[0] not in (ALG_ED25519, ALG_COSIGNATURE_V1):
        raise UnknownKeyError(f"verifier key {name!r} has an unknown algorithm")
    if len(blob) != 33:
        raise UnknownKeyError(f"verifier key {name!r} has the wrong key length ({len(blob) - 1} bytes)")
    if key_id(name, blob[0], blob[1:]) != kid:
        raise UnknownKeyError(f"verifier key {name!r}: key id {hex_id} does not match the key")
    return Verifier(name, kid, blob[1:], blob[0])


@dataclass(frozen=True)
class Signer:
    """An Ed25519 signer key (Go's ``PRIVATE+KEY+name+hexid+base64(0x01||seed)``)."""

    name: str
    seed: bytes

    @property
    def verifier(self) -> Verifier:
        pub = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw()
        return Verifier.from_public_key(self.name, pub)

    def sign(self, message: bytes) -> bytes:
        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)

    def skey(self) -> str:
        v = self.verifier
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode()
        return f"PRIVATE+KEY+{self.name}+{v.key_id:08x}+{blob}"

    @classmethod
    def parse(cls, skey: str) -> Signer:
        parts = skey.strip().split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise UnknownKeyError("signer key must be PRIVATE+KEY+name+hash+key")
        name, hex_id, b64 = parts[2], parts[3], parts[4]
        try:
            blob = base64.b64decode(b64, validate=True)
            kid = int(hex_id, 16)
        except (ValueError, binascii.Error) as exc:
            raise UnknownKeyError("malformed signer key") from exc
        if len(blob) != 33 or blob[0] != ALG_ED25519 or not is_valid_name(name):
            raise UnknownKeyError("signer key is not an Ed25519 key")
        signer = cls(name, blob[1:])
        if signer.verifier.key_id != kid:
            raise UnknownKeyError(f"signer key {name!r}: key id {hex_id} does not match the key")
        return signer


def generate_signer(name: str) -> Signer:
    if not is_valid_name(name):
        raise UnknownKeyError(f"invalid key name {name!r}")
    return Signer(name, Ed25519PrivateKey.generate().private_bytes_raw())


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise MalformedError("malformed note: text must end in a newline")
    for ch in text:
        if ch != "\n" and (unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029"):
            raise MalformedError("malformed note: control character in text")


def parse_note(data: bytes | str) -> Note:
    """Split a note into text and signature lines (syntax only, nothing verified)."""
    if isinstance(data, bytes):
        try:
            s = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError("malformed note: not UTF-8") from exc
    else:
        s = data
    split = s.rfind("\n\n")
    if split < 0:
        raise MalformedError("malformed note: no signature block")
    text, block = s[: split + 1], s[split + 2 :]
    _check_text(text)
    if not block.endswith("\n"):
        raise MalformedError("malformed note: signature block must end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(f"malformed note: more than {MAX_SIGNATURES} signatures")
    sigs: list[Signature] = []
    for line in lines:
        if not line.startswith(_DASH):
            raise MalformedError("malformed note: signature line does not start with an em dash")
        rest = line[len(_DASH) :]
        name, sep, b64 = rest.partition(" ")
        if not sep or not is_valid_name(name) or " " in b64:
            raise MalformedError("malformed note: bad signature line")
        try:
            blob = base64.b64decode(b64, validate=True)
        except binascii.Error as exc:
            raise MalformedError("malformed note: signature is not base64") from exc
        if len(blob) < 5:
            raise MalformedError("malformed note: signature too short")
        sigs.append(Signature(name, int.from_bytes(blob[:4], "big"), blob[4:]))
    return Note(text, tuple(sigs))


def open_note(data: bytes | str, verifiers: Iterable[Verifier]) -> Note:
    """Parse and verify: the note with its verified and unverified signatures (duplicates collapsed)."""
    note = parse_note(data)
    known = {(v.name, v.key_id): v for v in verifiers}
    message = note.text.encode()
    verified: list[Signature] = []
    unverified: list[Signature] = []
    seen: set[Signature] = set()
    for sig in note.signatures:
        if sig in seen:
            continue
        seen.add(sig)
        v = known.get((sig.name, sig.key_id))
        if v is None:
            unverified.append(sig)
            continue
        if not v.verify(message, sig.payload):
            raise SignatureError(f"invalid signature for key {sig.name}+{sig.key_id:08x}")
        verified.append(sig)
    if not verified:
        raise NoVerifiableSignatureError("note has no verifiable signatures")
    return Note(note.text, note.signatures, tuple(verified), tuple(unverified))


def sign_note(text: str, signers: Sequence[Signer], existing: Sequence[Signature] = ()) -> bytes:
    """The signed note: ``text`` signed by each of ``signers`` (after any ``existing`` signature lines)."""
    _check_text(text)
    sigs = list(existing)
    for s in signers:
        sigs.append(Signature(s.name, s.verifier.key_id, s.sign(text.encode())))
    return Note(text, tuple(sigs)).serialize()
