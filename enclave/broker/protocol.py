"""Trustee's KBS attestation protocol (RCAR, version 0.4.0), sans-I/O: wire shapes, binding, JWE. No aiohttp here.

Both ``veil broker`` (server) and ``enclave.kbs_client`` (the gateway's client) use this module, so the bytes one
side writes are the bytes the other parses. The shapes follow confidential-containers/kbs-types and trustee
``kbs/src`` (see shared/notes/trustee-kbs.md)::

    POST /kbs/v0/auth    {"version":"0.4.0","tee":"snp","extra-params":{"supported-hash-algorithms":[...]}}
                      <- {"nonce":"<b64 of 32 random bytes>","extra-params":""}     Set-Cookie: kbs-session-id=<id>
    POST /kbs/v0/attest  {"init-data":null,
                          "runtime-data":{"nonce":"<nonce>","tee-pubkey":{"kty":"EC","crv":"P-256",
                                          "alg":"ECDH-ES+A256KW","x":"<b64url>","y":"<b64url>"}},
                          "tee-evidence":{"primary_evidence":{...},"additional_evidence":""}}
                      <- {"token":"<JWT>"}
    GET  /kbs/v0/resource/<repo>/<type>/<tag>
                      <- {"protected":"<b64url>","encrypted_key":"..","iv":"..","ciphertext":"..","tag":".."}
    errors            <- 401 (404 for paths) {"type":"https://github.com/confidential-containers/kbs/errors/<T>",
                                              "detail":"<text>"}

Binding (Trustee's, exactly)::

    runtime = {"additional-evidence": <additional_evidence string>, "nonce": <challenge nonce>,
               "tee-pubkey": <tee-pubkey JWK, known members only>}
    kbs_report_data = H(JCS(runtime))     # H: the challenge's selected-hash-algorithm, else SHA-384

A Trustee TEE puts ``kbs_report_data`` (zero-padded to 64 bytes) into REPORT_DATA itself. Veil evidence (a Veil
bundle as ``primary_evidence``) binds it where a gateway bundle binds its key list: the bundle's ``key_config``
is exactly ``kbs_report_data`` and its client nonce is empty, so::

    REPORT_DATA = SHA-512("veil/report/v2\\0" || SHA-256(kbs_report_data) || SHA-256(gpu_evidence)
                          || SHA-256("{}") || 0^32)

(the bundle's ``config`` is empty here: the broker's policy checks measurements, not the gateway's settings)

and the GPU evidence inside the bundle is collected with ``gpu_nonce(kbs_report_data)``, fresh per challenge.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

PROTOCOL_VERSION: Final = "0.4.0"
KBS_PREFIX: Final = "/kbs/v0"
SESSION_COOKIE: Final = "kbs-session-id"
ERROR_TYPE_PREFIX: Final = "https://github.com/confidential-containers/kbs/errors"
#: kbs-types ``Tee`` values (serde names).
TEES: Final = ("az-snp-vtpm", "az-tdx-vtpm", "snp", "tdx", "sgx", "nvidia", "cca", "csv", "se", "hygondcu", "tpm",
               "sample", "sampledevice")
#: Veil bundle platform -> the ``tee`` a Veil client announces. Simulated evidence is Trustee's test-only ``sample``.
PLATFORM_TEE: Final = {"sev-snp": "snp", "tdx": "tdx", "simulated": "sample"}
HASH_ALGORITHMS: Final = ("sha256", "sha384", "sha512", "sm3")
DEFAULT_HASH: Final = "sha384"
NONCE_BYTES: Final = 32

ALG_ECDH_ES_A256KW: Final = "ECDH-ES+A256KW"
ALG_RSA_OAEP_256: Final = "RSA-OAEP-256"
ENC_A256GCM: Final = "A256GCM"
_CURVES: Final = {"P-256": (ec.SECP256R1(), 32), "P-521": (ec.SECP521R1(), 66)}
MIN_RSA_BITS: Final = 2048
_B64URL: Final = re.compile(r"^[A-Za-z0-9_-]*$")
RESOURCE_SEGMENT: Final = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class KbsProtocolError(Exception):
    """A message that does not follow the protocol. ``type_name`` and ``status`` are what a KBS answers with."""

    def __init__(self, detail: str, *, type_name: str = "AttestationError", status: int = 401) -> None:
        super().__init__(detail)
        self.detail = detail
        self.type_name = type_name
        self.status = status


# ------------------------------------------------------------------------------------------------------------------
# Encoding helpers


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of :func:`b64url`."""
    if not isinstance(text, str) or not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jcs(value: Any) -> bytes:
    """RFC 8785 canonical JSON for values whose leaves are strings (all KBS runtime data is): keys sorted, no spaces.

    Python's ``json`` escapes exactly what JCS escapes when ``ensure_ascii=False``, and for ASCII keys code-point
    order equals JCS's UTF-16 order; numbers, booleans and null are refused rather than risk a divergence.
    """
    _check_jcs_leaves(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _check_jcs_leaves(value: Any) -> None:
    if isinstance(value, str):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or not k.isascii():
                raise ValueError("runtime data keys must be ASCII strings")
            _check_jcs_leaves(v)
        return
    if isinstance(value, list):
        for v in value:
            _check_jcs_leaves(v)
        return
    raise ValueError(f"runtime data may hold only strings, objects and arrays, not {type(value).__name__}")


def digest(algorithm: str, data: bytes) -> bytes:
    """``H(data)`` for a KBS hash algorithm name (``sha256``, ``sha384``, ``sha512``, ``sm3``)."""
    if algorithm in ("sha256", "sha384", "sha512"):
        return hashlib.new(algorithm, data).digest()
    if algorithm == "sm3":
        h = hashes.Hash(hashes.SM3())
        h.update(data)
        return h.finalize()
    raise KbsProtocolError(f"hash algorithm {algorithm!r} is not supported")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise KbsProtocolError(f"{what} is not JSON: {exc}", type_name="SerdeError") from None
    if not isinstance(obj, dict):
        raise KbsProtocolError(f"{what} must be a JSON object", type_name="SerdeError")
    return obj


# ------------------------------------------------------------------------------------------------------------------
# Request / Challenge


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """``POST /kbs/v0/auth``."""

    tee: str
    version: str = PROTOCOL_VERSION
    extra_params: Any = None

    def encode(self) -> bytes:
        extra = self.extra_params if self.extra_params is not None else {
            "supported-hash-algorithms": list(HASH_ALGORITHMS)}
        return orjson.dumps({"version": self.version, "tee": self.tee, "extra-params": extra})

    @classmethod
    def decode(cls, body: bytes) -> AuthRequest:
        """Parse and check a Request; the version must be exactly ``0.4.0`` and the tee a kbs-types value.

        Raises:
            KbsProtocolError: anything else (401, as Trustee answers).
        """
        obj = _json_object(body, "Request")
        version, tee = obj.get("version"), obj.get("tee")
        if not isinstance(version, str) or not isinstance(tee, str) or "extra-params" not in obj:
            raise KbsProtocolError("Request needs string 'version' and 'tee' and an 'extra-params' member",
                                   type_name="SerdeError")
        if version != PROTOCOL_VERSION:
            raise KbsProtocolError(f"KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the "
                                   f"request is {version}")
        if tee not in TEES:
            raise KbsProtocolError(f"unknown tee {tee!r}", type_name="SerdeError")
        return cls(tee=tee, version=version, extra_params=obj["extra-params"])


@dataclass(frozen=True, slots=True)
class Challenge:
    """The answer to ``auth``: a base64 (standard, padded) nonce; ``extra-params`` is ``""`` for the built-in AS."""

    nonce: str
    extra_params: Any = ""

    @classmethod
    def new(cls) -> Challenge:
        return cls(nonce=base64.b64encode(os.urandom(NONCE_BYTES)).decode("ascii"))

    def encode(self) -> bytes:
        return orjson.dumps({"nonce": self.nonce, "extra-params": self.extra_params})

    @classmethod
    def decode(cls, body: bytes) -> Challenge:
        obj = _json_object(body, "Challenge")
        nonce = obj.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise KbsProtocolError("Challenge has no nonce", type_name="SerdeError")
        return cls(nonce=nonce, extra_params=obj.get("extra-params", ""))

    @property
    def hash_algorithm(self) -> str:
        """``selected-hash-algorithm`` when the server names one, else SHA-384 (the reference client's rule)."""
        if isinstance(self.extra_params, dict) and "selected-hash-algorithm" in self.extra_params:
            name = self.extra_params["selected-hash-algorithm"]
            if not isinstance(name, str) or name.lower() not in HASH_ALGORITHMS:
                raise KbsProtocolError(f"the KBS selected an unsupported hash algorithm {name!r}")
            return name.lower()
        return DEFAULT_HASH


# ------------------------------------------------------------------------------------------------------------------
# tee-pubkey and the binding


def canonical_tee_pubkey(jwk: Any) -> dict[str, str]:
    """The kbs-types ``TeePubKey`` as the server re-serializes it: known members only, in kbs-types order.

    Accepted: ``EC`` + ``P-256``/``P-521`` + ``ECDH-ES+A256KW``; ``RSA`` + ``RSA-OAEP-256`` (at least 2048 bits).
    ``RSA1_5`` (deprecated in Trustee) and post-quantum ``AKP`` are refused.

    Raises:
        KbsProtocolError: any other key, or coordinates that are not a point on the curve.
    """
    if not isinstance(jwk, dict):
        raise KbsProtocolError("tee-pubkey must be a JWK object")
    kty = jwk.get("kty")
    try:
        if kty == "EC":
            out = {"kty": "EC", "crv": jwk["crv"], "alg": jwk["alg"], "x": jwk["x"], "y": jwk["y"]}
            if out["alg"] != ALG_ECDH_ES_A256KW or out["crv"] not in _CURVES:
                raise KbsProtocolError(f"curve {out['crv']} and algorithm {out['alg']} is not supported")
            _ec_public_key(out)
            return out
        if kty == "RSA":
            out = {"kty": "RSA", "alg": jwk["alg"], "n": jwk["n"], "e": jwk["e"]}
            if out["alg"] != ALG_RSA_OAEP_256:
                raise KbsProtocolError(f"algorithm {out['alg']} is not supported")
            if _rsa_public_key(out).key_size < MIN_RSA_BITS:
                raise KbsProtocolError(f"RSA keys must have at least {MIN_RSA_BITS} bits")
            return out
    except (KeyError, TypeError, ValueError) as exc:
        raise KbsProtocolError(f"malformed tee-pubkey: {type(exc).__name__}: {exc}") from None
    raise KbsProtocolError(f"tee-pubkey kty {kty!r} is not supported")


def _ec_public_key(jwk: dict[str, str]) -> ec.EllipticCurvePublicKey:
    curve, size = _CURVES[jwk["crv"]]
    x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
    if len(x) != size or len(y) != size:
        raise ValueError(f"coordinates must be {size} bytes")
    return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve).public_key()


def _rsa_public_key(jwk: dict[str, str]) -> rsa.RSAPublicKey:
    n = int.from_bytes(b64url_decode(jwk["n"]), "big")
    e = int.from_bytes(b64url_decode(jwk["e"]), "big")
    return rsa.RSAPublicNumbers(e, n).public_key()


def runtime_data(nonce: str, tee_pubkey: dict[str, str], additional_evidence: str = "") -> dict[str, Any]:
    """The primary runtime data Trustee's KBS rebuilds for the attestation service (section 4 of the notes)."""
    return {"additional-evidence": additional_evidence, "nonce": nonce, "tee-pubkey": tee_pubkey}


def kbs_report_data(nonce: str, tee_pubkey: dict[str, str], hash_algorithm: str = DEFAULT_HASH,
                    additional_evidence: str = "") -> bytes:
    """``H(JCS(runtime))``: what a Trustee TEE puts in REPORT_DATA, and what a Veil bundle binds as ``key_config``."""
    return digest(hash_algorithm, jcs(runtime_data(nonce, tee_pubkey, additional_evidence)))


# ------------------------------------------------------------------------------------------------------------------
# Attestation


@dataclass(frozen=True, slots=True)
class Attestation:
    """``POST /kbs/v0/attest``. ``primary_evidence`` is TEE-specific JSON (for Veil: a bundle's JSON object)."""

    nonce: str
    tee_pubkey: dict[str, str]
    primary_evidence: Any
    additional_evidence: str = ""
    init_data: Any = None

    def encode(self) -> bytes:
        """kbs-types field order; ``init-data`` is serialized as ``null`` when absent, as serde does."""
        return orjson.dumps({
            "init-data": self.init_data,
            "runtime-data": {"nonce": self.nonce, "tee-pubkey": self.tee_pubkey},
            "tee-evidence": {"primary_evidence": self.primary_evidence,
                             "additional_evidence": self.additional_evidence},
        })

    @classmethod
    def decode(cls, body: bytes) -> Attestation:
        """Parse an Attestation; the tee-pubkey is reduced to its canonical members (as Trustee's serde does).

        Raises:
            KbsProtocolError: missing members, wrong types, or an unsupported key.
        """
        obj = _json_object(body, "Attestation")
        rd, ev = obj.get("runtime-data"), obj.get("tee-evidence")
        if not isinstance(rd, dict) or not isinstance(ev, dict):
            raise KbsProtocolError("Attestation needs 'runtime-data' and 'tee-evidence' objects",
                                   type_name="SerdeError")
        nonce, add = rd.get("nonce"), ev.get("additional_evidence")
        if not isinstance(nonce, str) or "primary_evidence" not in ev or not isinstance(add, str):
            raise KbsProtocolError("Attestation needs runtime-data.nonce, tee-evidence.primary_evidence and "
                                   "tee-evidence.additional_evidence (a string)", type_name="SerdeError")
        return cls(nonce=nonce, tee_pubkey=canonical_tee_pubkey(rd.get("tee-pubkey")),
                   primary_evidence=ev["primary_evidence"], additional_evidence=add, init_data=obj.get("init-data"))


def nonces_equal(a: str, b: str) -> bool:
    """Constant-time comparison of two nonce strings."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


# ------------------------------------------------------------------------------------------------------------------
# Errors


def encode_error(type_name: str, detail: str) -> bytes:
    """``ErrorInformation`` as Trustee serializes it: ``{"type": PREFIX/<Type>, "detail": ...}``, compact."""
    return orjson.dumps({"type": f"{ERROR_TYPE_PREFIX}/{type_name}", "detail": detail})


# ------------------------------------------------------------------------------------------------------------------
# JWE (server side), built the way trustee kbs/src/jwe/mod.rs builds it


def _concat_kdf(z: bytes, alg: str = ALG_ECDH_ES_A256KW, length: int = 32) -> bytes:
    # NIST SP 800-56A Concat KDF with SHA-256 (RFC 7518 §4.6.2): AlgorithmID, empty PartyUInfo/PartyVInfo, keydatalen.
    other = len(alg).to_bytes(4, "big") + alg.encode() + bytes(4) + bytes(4) + (length * 8).to_bytes(4, "big")
    return ConcatKDFHash(hashes.SHA256(), length, other).derive(z)


def jwe_encrypt(tee_pubkey: dict[str, str], payload: bytes) -> bytes:
    """Encrypt ``payload`` to the TEE's key: a flattened JSON JWE, ``enc`` A256GCM, no ``aad`` member.

    ``ECDH-ES+A256KW``: ephemeral key on the TEE key's curve, Concat KDF, AES key wrap of a random 32-byte CEK
    (``encrypted_key`` is 40 bytes). ``RSA-OAEP-256``: OAEP with SHA-256 and MGF1-SHA-256. The GCM additional data
    is the ASCII of the ``protected`` member (RFC 7516 §5.1).
    """
    key = canonical_tee_pubkey(tee_pubkey)
    cek = AESGCM.generate_key(256)
    if key["kty"] == "EC":
        curve, size = _CURVES[key["crv"]]
        peer = _ec_public_key(key)
        eph = ec.generate_private_key(curve)
        kek = _concat_kdf(eph.exchange(ec.ECDH(), peer))
        encrypted_key = aes_key_wrap(kek, cek)
        nums = eph.public_key().public_numbers()
        header: dict[str, Any] = {"alg": ALG_ECDH_ES_A256KW, "enc": ENC_A256GCM,
                                  "epk": {"crv": key["crv"], "kty": "EC", "x": b64url(nums.x.to_bytes(size, "big")),
                                          "y": b64url(nums.y.to_bytes(size, "big"))}}
    else:
        encrypted_key = _rsa_public_key(key).encrypt(
            cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
        header = {"alg": ALG_RSA_OAEP_256, "enc": ENC_A256GCM}
    protected = b64url(orjson.dumps(header))
    iv = os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, payload, protected.encode("ascii"))
    return orjson.dumps({"protected": protected, "encrypted_key": b64url(encrypted_key), "iv": b64url(iv),
                         "ciphertext": b64url(sealed[:-16]), "tag": b64url(sealed[-16:])})


def parse_resource_path(repository: str, type_: str, tag: str) -> str:
    """``repo/type/tag`` after checking each segment (no traversal, no empty parts)."""
    for part in (repository, type_, tag):
        if not RESOURCE_SEGMENT.match(part) or part in (".", ".."):
            raise KbsProtocolError(f"Request path resource/{repository}/{type_}/{tag} is invalid",
                                   type_name="InvalidRequestPath", status=404)
    return f"{repository}/{type_}/{tag}"
