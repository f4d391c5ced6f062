"""Key configurations (RFC 9458 §3), ``application/ohttp-keys`` lists, gateway keys and the key ring.

Invariant (as in the ``ohttp`` crate): a :class:`KeyConfig` never holds an unsupported algorithm; lists drop
configs and suites this package cannot use instead of failing (Cloudflare serves a PQ KEM beside X25519).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Final, Iterable, Sequence

from ._hpke import AeadId, KdfId, KemId, PrivateKey, aead_id, kdf_id, kem_id
from .errors import DecodeError, KeyIdError, LocalProtocolError, UnsupportedError

__all__ = ["SymmetricSuite", "KeyConfig", "GatewayKey", "KeyRing", "MEDIA_TYPE_KEYS", "DEFAULT_SUITES", "choose_config",
           "encode_list", "decode_list"]

MEDIA_TYPE_KEYS: Final = "application/ohttp-keys"

#: An injectable time source returning Unix seconds (tests pin it).
Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class SymmetricSuite:
    """One (KDF, AEAD) pair that a key configuration offers."""

    kdf: KdfId
    aead: AeadId


#: What Veil's gateway offers by default (notes: X25519 with AES-128-GCM and ChaCha20-Poly1305).
DEFAULT_SUITES: Final = (
    SymmetricSuite(KdfId.HKDF_SHA256, AeadId.AES_128_GCM),
    SymmetricSuite(KdfId.HKDF_SHA256, AeadId.CHACHA20_POLY1305),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyConfig:
    """A key configuration::

        Key Config {
          Key Identifier (8),
          HPKE KEM ID (16),
          HPKE Public Key (Npk * 8),
          HPKE Symmetric Algorithms Length (16) = 4..65532,
          HPKE Symmetric Algorithms (32) ...,
        }
    """

    key_id: int
    kem: KemId
    public_key: bytes
    suites: tuple[SymmetricSuite, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 255:
            raise LocalProtocolError(f"key id {self.key_id} out of range 0..255")
        if len(self.public_key) != self.kem.n_pk:
            raise LocalProtocolError(f"public key is {len(self.public_key)} bytes, kem needs {self.kem.n_pk}")
        if not self.suites:
            raise LocalProtocolError("a key config needs at least one symmetric suite")
        if len(self.suites) > 16383:
            raise LocalProtocolError("too many symmetric suites")

    def encode(self) -> bytes:
        """The wire form of this one configuration (no length prefix)."""
        algs = b"".join(int(s.kdf).to_bytes(2, "big") + int(s.aead).to_bytes(2, "big") for s in self.suites)
        return (
            bytes((self.key_id,))
            + int(self.kem).to_bytes(2, "big")
            + self.public_key
            + len(algs).to_bytes(2, "big")
            + algs
        )

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        """Decode exactly one configuration.

        Raises:
            DecodeError: malformed, truncated, or trailing bytes.
            UnsupportedError: unknown KEM, or no (KDF, AEAD) pair this package supports.
        """
        config, end = _decode_one(data, 0)
        if end != len(data):
            raise DecodeError(f"key config has {len(data) - end} trailing bytes")
        if config is None:
            raise UnsupportedError("key config uses no supported kem/kdf/aead combination")
        return config

    def supports(self, suite: SymmetricSuite) -> bool:
        """Whether ``suite`` is one of the offered pairs."""
        return suite in self.suites


def _decode_one(data: bytes, pos: int) -> tuple[KeyConfig | None, int]:
    # Returns None for a well-formed config that we cannot use. The KEM id tells the public key length, so an
    # unknown KEM can only be skipped when the caller knows where the config ends (the list's length prefix).
    n = len(data)
    if pos + 3 > n:
        raise DecodeError(f"key config truncated: {n - pos} of at least 3 bytes")
    key_id_ = data[pos]
    kem = kem_id(int.from_bytes(data[pos + 1 : pos + 3], "big"))
    pk_end = pos + 3 + kem.n_pk
    if pk_end + 2 > n:
        raise DecodeError(f"key config truncated: {n - pos} of at least {pk_end + 2 - pos} bytes")
    public_key = bytes(data[pos + 3 : pk_end])
    algs_len = int.from_bytes(data[pk_end : pk_end + 2], "big")
    if algs_len < 4 or algs_len % 4:
        raise DecodeError(f"symmetric algorithms length {algs_len} is not a positive multiple of 4")
    end = pk_end + 2 + algs_len
    if end > n:
        raise DecodeError(f"key config truncated: {n - pos} of {end - pos} bytes")
    suites: list[SymmetricSuite] = []
    for i in range(pk_end + 2, end, 4):
        try:
            suite = SymmetricSuite(
                kdf_id(int.from_bytes(data[i : i + 2], "big")), aead_id(int.from_bytes(data[i + 2 : i + 4], "big"))
            )
        except UnsupportedError:
            continue
        if suite not in suites:
            suites.append(suite)
    if not suites:
        return None, end
    return KeyConfig(key_id=key_id_, kem=kem, public_key=public_key, suites=tuple(suites)), end


def encode_list(configs: Iterable[KeyConfig]) -> bytes:
    """``application/ohttp-keys``: each config prefixed by its 2-byte length (RFC 9458 §3.2)."""
    out = bytearray()
    for c in configs:
        enc = c.encode()
        out += len(enc).to_bytes(2, "big") + enc
    return bytes(out)


def choose_config(configs: Iterable[KeyConfig], *, require_post_quantum: bool = False) -> KeyConfig:
    """The configuration a client encapsulates to: the first post-quantum one (X-Wing) if any, else the first.

    Raises:
        UnsupportedError: no configuration, or none post-quantum while ``require_post_quantum`` is set.
    """
    configs = list(configs)
    for c in configs:
        if c.kem.post_quantum:
            return c
    if require_post_quantum:
        raise UnsupportedError("the gateway offers no post-quantum key configuration (require_post_quantum)")
    if not configs:
        raise UnsupportedError("no usable key configuration")
    return configs[0]


def decode_list(data: bytes) -> list[KeyConfig]:
    """Decode ``application/ohttp-keys``; configs with unknown KEMs or only unknown suites are skipped.

    Raises:
        DecodeError: any encoding error discards the whole list (RFC 9458 §3.2), so that clients cannot be
            partitioned by how they recover.
    """
    out: list[KeyConfig] = []
    pos = 0
    n = len(data)
    if n == 0:
        raise DecodeError("key config list is empty")
    while pos < n:
        if pos + 2 > n:
            raise DecodeError(f"key config list truncated: length prefix at offset {pos}")
        length = int.from_bytes(data[pos : pos + 2], "big")
        start, end = pos + 2, pos + 2 + length
        if end > n:
            raise DecodeError(f"key config list truncated: config of {length} bytes at offset {pos}")
        try:
            config, used = _decode_one(data[start:end], 0)
        except UnsupportedError:
            config, used = None, length  # unknown KEM: the length prefix lets us skip it
        if used != length:
            raise DecodeError(f"key config at offset {pos} is {used} bytes, its prefix says {length}")
        if config is not None:
            out.append(config)
        pos = end
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayKey:
    """A gateway's private key with its configuration and lifetime (Unix times; ``None`` means unbounded)."""

    config: KeyConfig
    private_key: PrivateKey = field(repr=False)
    not_before: float | None = None
    not_after: float | None = None
    #: Published in ``application/ohttp-keys``; a key being rotated out is still accepted but not published.
    published: bool = True

    @classmethod
    def generate(
        cls,
        key_id: int,
        kem: KemId = KemId.X25519_SHA256,
        suites: Sequence[SymmetricSuite] = DEFAULT_SUITES,
        *,
        not_before: float | None = None,
        not_after: float | None = None,
    ) -> GatewayKey:
        """A fresh key from the operating system's randomness; it exists only in memory."""
        return cls._build(key_id, PrivateKey.generate(kem), suites, not_before, not_after)

    @classmethod
    def derive(
        cls,
        key_id: int,
        ikm: bytes,
        kem: KemId = KemId.X25519_SHA256,
        suites: Sequence[SymmetricSuite] = DEFAULT_SUITES,
        *,
        not_before: float | None = None,
        not_after: float | None = None,
    ) -> GatewayKey:
        """RFC 9180 DeriveKeyPair(ikm): for key-management integrations that hold a seed, not a key."""
        return cls._build(key_id, PrivateKey.derive(kem, ikm), suites, not_before, not_after)

    @classmethod
    def from_private_bytes(
        cls,
        key_id: int,
        private_key: bytes,
        kem: KemId = KemId.X25519_SHA256,
        suites: Sequence[SymmetricSuite] = DEFAULT_SUITES,
        *,
        not_before: float | None = None,
        not_after: float | None = None,
    ) -> GatewayKey:
        """Load a serialized private key (tests and key-management integrations only)."""
        return cls._build(key_id, PrivateKey.from_private_bytes(kem, private_key), suites, not_before, not_after)

    @classmethod
    def _build(
        cls,
        key_id: int,
        sk: PrivateKey,
        suites: Sequence[SymmetricSuite],
        not_before: float | None,
        not_after: float | None,
    ) -> GatewayKey:
        config = KeyConfig(key_id=key_id, kem=sk.kem, public_key=sk.public_bytes, suites=tuple(suites))
        return cls(config=config, private_key=sk, not_before=not_before, not_after=not_after)

    def accepts_at(self, now: float) -> bool:
        """Whether requests to this key are accepted at ``now``."""
        return (self.not_before is None or now >= self.not_before) and (self.not_after is None or now < self.not_after)


class KeyRing:
    """Gateway keys by key id, with activation and expiry so that keys rotate with overlap.

    Rotation: :meth:`rotate` adds the new key (published) and keeps the old ones accepted, unpublished, for a
    grace period; after it they are retired and a request to them gets a :class:`KeyIdError` (422).
    """

    def __init__(self, keys: Iterable[GatewayKey] = (), *, clock: Clock | None = None) -> None:
        self._keys: dict[int, GatewayKey] = {}
        #: ids handed out by :meth:`reserve_key_id` whose key is not in the ring yet (its evidence is being collected)
        self._reserved: set[int] = set()
        self._clock = clock or time.time
        for k in keys:
            self.add(k)

    def add(self, key: GatewayKey) -> None:
        """Add a key; its id must not be in use (a reservation of that id is used up)."""
        if key.config.key_id in self._keys:
            raise LocalProtocolError(f"key id {key.config.key_id} is already in the ring")
        self._reserved.discard(key.config.key_id)
        self._keys[key.config.key_id] = key

    def rotate(self, new_key: GatewayKey | Sequence[GatewayKey], grace_seconds: float) -> None:
        """Publish ``new_key`` (or several, one per KEM); the others stop being published and retire after
        ``grace_seconds``."""
        new_keys = [new_key] if isinstance(new_key, GatewayKey) else list(new_key)
        now = self._clock()
        self.purge()
        for k in new_keys:
            self._keys.pop(k.config.key_id, None)
        for kid, k in list(self._keys.items()):
            until = now + grace_seconds
            if k.not_after is not None:
                until = min(until, k.not_after)
            self._keys[kid] = replace(k, published=False, not_after=until)
        for k in new_keys:
            self.add(k)

    def next_key_id(self) -> int:
        """The lowest key id not in use and not reserved (after purging retired keys). Two rotations that both ask
        before either adds its key get the same id: they must use :meth:`reserve_key_id` instead."""
        self.purge()
        for kid in range(256):
            if kid not in self._keys and kid not in self._reserved:
                return kid
        raise LocalProtocolError("all 256 key ids are in use")

    def reserve_key_id(self) -> int:
        """Pick and reserve the next key id in one step, for a key that joins the ring later (:meth:`rotate` or
        :meth:`add` uses the reservation up; :meth:`release_key_id` gives it back if the key never comes). A rotation
        collects evidence between choosing its id and rotating, and another rotation can start meanwhile: without
        the reservation both would choose the same id, and the second key would silently replace the first."""
        kid = self.next_key_id()
        self._reserved.add(kid)
        return kid

    def release_key_id(self, key_id: int) -> None:
        """Give back a reservation whose key will not be added (its rotation was abandoned)."""
        self._reserved.discard(key_id)

    def purge(self) -> None:
        """Forget keys whose lifetime has ended."""
        now = self._clock()
        for kid in [kid for kid, k in self._keys.items() if k.not_after is not None and now >= k.not_after]:
            del self._keys[kid]

    def get(self, key_id: int) -> GatewayKey:
        """The key for ``key_id`` if it is accepted now.

        Raises:
            KeyIdError: unknown, not yet active, or retired.
        """
        key = self._keys.get(key_id)
        if key is None or not key.accepts_at(self._clock()):
            raise KeyIdError(f"key id {key_id} is unknown or retired")
        return key

    def published(self) -> list[GatewayKey]:
        """Keys to advertise now, newest (highest not_before) first; of keys made together, post-quantum (X-Wing)
        before classical, then the highest id."""
        now = self._clock()
        keys = [k for k in self._keys.values() if k.published and k.accepts_at(now)]
        keys.sort(key=lambda k: (k.not_before or 0.0, k.config.kem.post_quantum, k.config.key_id), reverse=True)
        return keys

    def encode_published(self) -> bytes:
        """The ``application/ohttp-keys`` body for the keys advertised now."""
        return encode_list(k.config for k in self.published())

    def next_change(self) -> float | None:
        """When the published set changes next (for cache lifetimes), or ``None``."""
        now = self._clock()
        times = [t for k in self._keys.values() for t in (k.not_before, k.not_after) if t is not None and t > now]
        return min(times) if times else None

    def __len__(self) -> int:
        return len(self._keys)


def random_ikm(kem: KemId = KemId.X25519_SHA256) -> bytes:
    """Fresh seed material for :meth:`GatewayKey.derive`."""
    return os.urandom(kem.n_sk * 2)
