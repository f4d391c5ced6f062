"""Verify a Microsoft Azure Attestation (MAA) token: an RS256 JWT, against the signing keys a MaaPolicy names.

MAA verifies the hardware evidence (SGX quote, SNP report, Azure CVM HCL report + vTPM quote, TDX quote) and
signs what it found as claims; a relying party trusts the MAA instance (``iss``) and its signing keys. This module
checks, each as one line of the verdict:

* the token is a compact JWS with ``alg`` RS256 (never ``none``/HMAC, no ``crit``), and the key picked by ``kid``
  (``x5c[0]`` and/or ``n``/``e``; they must agree) verifies its signature. Nothing is fetched: the ``jku`` header is
  only compared with ``iss``. RSA keys under 2048 bits are refused unless ``policy.allow_rsa1024`` (some shared MAA
  instances sign with RSA-1024; the document says it was accepted);
* the key is one the policy trusts: its RFC 7638 SHA-256 thumbprint is one of ``policy.key_thumbprints``, or (no
  pins) it is in the policy's own JWKS (``[maa] jwks_file``). Keys that arrive with the evidence are as unsigned
  as the token: anyone can sign a token with a key of their own and ship its JWKS beside it. They are only looked
  through for a key whose thumbprint is pinned;
* ``iss`` is one of ``policy.issuers``; ``nbf <= now < exp`` at the caller's explicit ``now``;
* the platform claims: ``x-ms-attestation-type`` ``sgx`` / ``sevsnpvm`` / ``tdxvm`` / ``azurevm`` (hardware in
  ``x-ms-isolation-tee``), debug off, the measurement (MRENCLAVE / SNP launch measurement / MRTD) in the allow
  list, and the caller's key binding in the attested runtime data (SGX enclave-held data, ``x-ms-runtime``:
  ``client-payload.nonce``, ``user-data``, or the thumbprint of a JWK in ``keys``).

The JWT is parsed by hand (base64url + JSON): one algorithm, one key type, and ``cryptography`` for RSA.
Imports nothing from ``enclave`` outside ``enclave.attestation``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import EvidenceFormatError
from ..result import Verdict
from .hcl import b64url_decode, strict_json_object
from .policy import MaaPolicy

PLATFORM: Final = "maa"
BINDING_SKIPPED: Final = "binding skipped (--no-binding)"
ANY_MEASUREMENT: Final = "any measurement accepted (--any-measurement): the workload is NOT pinned"
MIN_RSA_BITS: Final = 2048
MIN_RSA_BITS_WEAK: Final = 1024
#: Members that enter an RFC 7638 thumbprint, per key type.
_THUMBPRINT_MEMBERS: Final = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"),
                              "oct": ("k", "kty")}
#: Per hardware type: (measurement claim, debug claim) in the object that carries the hardware claims.
_TEE_CLAIMS: Final = {
    "sgx": ("x-ms-sgx-mrenclave", "x-ms-sgx-is-debuggable"),
    "sevsnpvm": ("x-ms-sevsnpvm-launchmeasurement", "x-ms-sevsnpvm-is-debuggable"),
    "tdxvm": ("tdx_mrtd", "tdx_td_attributes_debug"),
}
#: Azure VM (vTPM) boot facts that mean someone can debug the guest; true fails unless debug is allowed.
_AZUREVM_DEBUG: Final = ("x-ms-azurevm-bootdebug-enabled", "x-ms-azurevm-kerneldebug-enabled",
                         "x-ms-azurevm-hypervisordebug-enabled")


@dataclass(frozen=True)
class _Jwt:
    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


@dataclass(frozen=True)
class _Tee:
    attestation_type: str
    hardware: str | None  # sgx / sevsnpvm / tdxvm, or None when unknown
    claims: dict[str, Any]  # the object holding the hardware claims
    runtime: Any  # the attested runtime data object (x-ms-runtime), if any


def verify_maa_token(
    token: str,
    evidence_jwks: Mapping[str, Any] | None,
    policy: MaaPolicy,
    *,
    now: datetime.datetime,
    expected_runtime_key: bytes | None,
) -> Verdict:
    """Verify an MAA JWT with the signing keys ``policy`` trusts and judge its claims; one check per step.

    The keys come from the policy: ``policy.jwks`` (the user's ``jwks_file``) and ``policy.key_thumbprints``.
    ``evidence_jwks`` is a JWKS (``{"keys": [...]}``) that came with the token (a bundle's ``jwks`` / ``maa_jwks``),
    or None: it is untrusted and only supplies the material of keys whose thumbprint is pinned. A policy naming no
    key fails the "signing key pinned" check whatever the evidence carries. ``expected_runtime_key`` is the binding
    value that must appear in the token's attested runtime data; None records a passing check saying "binding
    skipped (--no-binding)".

    Raises:
        EvidenceFormatError: the token is not a compact JWS with JSON header and payload, or ``evidence_jwks`` is not
            a JWKS.
        ValueError: ``now`` is naive (a caller bug).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("verify_maa_token: now must be timezone-aware")
    jwt = _parse(token)
    keys = [*policy.jwks, *_pinned_evidence_keys(evidence_jwks, policy)]
    v = Verdict(platform=PLATFORM)
    h, p = jwt.header, jwt.payload
    v.add("token format", True, expected="JWS compact serialization, JSON header and claims",
          found=f"alg {h.get('alg')!r}, kid {h.get('kid')!r}, {len(p)} claims")

    alg_ok = h.get("alg") == "RS256" and "crit" not in h and h.get("typ", "JWT") == "JWT"
    v.add("algorithm", alg_ok, expected="alg RS256, typ JWT, no crit",
          found=f"alg {h.get('alg')!r}, typ {h.get('typ')!r}" + (", crit present" if "crit" in h else ""))

    key, jwk = _check_key(v, h, keys, policy)
    _check_thumbprint(v, key, policy)
    _check_signature(v, jwt, key if alg_ok else None)
    _check_issuer(v, h, p, jwk, policy)
    _check_validity(v, p, now)
    tee = _check_platform(v, p)
    _check_debug(v, p, tee, policy)
    measurement = _check_measurement(v, tee, policy)
    _check_runtime_binding(v, tee, expected_runtime_key)

    v.measurement = measurement
    v.claims = {
        "iss": p.get("iss"),
        "kid": h.get("kid"),
        "iat": p.get("iat"), "nbf": p.get("nbf"), "exp": p.get("exp"),
        "attestation_type": tee.attestation_type,
        "hardware": tee.hardware,
        "compliance_status": tee.claims.get("x-ms-compliance-status"),
        "policy_hash": p.get("x-ms-policy-hash"),
        "measurement": measurement.hex() if measurement is not None else None,
        "runtime": tee.runtime,
        "key_thumbprint": jwk_thumbprint(key) if key is not None else None,
    }
    return v


def jwk_thumbprint(key: rsa.RSAPublicKey | Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 JWK thumbprint (base64url, no padding) of an RSA key or of a JWK (RSA, EC, OKP, oct)."""
    return _b64url(_thumbprint_digest(key))


# --- parsing -------------------------------------------------------------------------------------------------------


def _parse(token: str) -> _Jwt:
    if not isinstance(token, str):
        raise EvidenceFormatError("the MAA token must be text")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise EvidenceFormatError(f"the MAA token has {len(parts)} dot-separated parts, not 3 (JWS compact)")
    try:
        header_raw, payload_raw, signature = (b64url_decode(s) for s in parts)
    except ValueError:
        raise EvidenceFormatError("the MAA token has a part that is not base64url") from None
    header = strict_json_object(header_raw, "JWT header")
    payload = strict_json_object(payload_raw, "JWT claims")
    return _Jwt(header, payload, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


# --- key, signature, issuer, time -------------------------------------------------------------------------------------


def _pinned_evidence_keys(evidence_jwks: Mapping[str, Any] | None, policy: MaaPolicy) -> list[Mapping[str, Any]]:
    """The keys of a JWKS that came with the evidence whose thumbprint the policy pins; none without pins."""
    if evidence_jwks is None:
        return []
    keys = evidence_jwks.get("keys") if isinstance(evidence_jwks, Mapping) else None
    if not isinstance(keys, list):
        raise EvidenceFormatError("JWKS must be a JSON object with a 'keys' list")
    out = []
    for jwk in keys:
        if not isinstance(jwk, Mapping) or not policy.key_thumbprints:
            continue
        key, _ = _jwk_key(jwk)
        if key is not None and any(hmac.compare_digest(jwk_thumbprint(key), t) for t in policy.key_thumbprints):
            out.append(jwk)
    return out


def _check_key(
    v: Verdict, header: Mapping[str, Any], keys: list[Any], policy: MaaPolicy
) -> tuple[rsa.RSAPublicKey | None, Mapping[str, Any] | None]:
    name = "signing key"
    expected = f"one RSA key (>= {MIN_RSA_BITS} bits{', or RSA-1024 if allowed' if policy.allow_rsa1024 else ''}) " \
               "with the token's kid in the JWKS"
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        v.add(name, False, expected=expected, found="no kid in the token header")
        return None, None
    found = [k for k in keys if isinstance(k, Mapping) and k.get("kid") == kid]
    if not found:
        v.add(name, False, expected=expected, found=f"kid {kid!r} not among the trusted keys ({len(policy.jwks)} from "
              f"the policy's JWKS, {len(keys) - len(policy.jwks)} pinned ones that came with the evidence)")
        return None, None
    materials: list[rsa.RSAPublicKey] = []
    problems: list[str] = []
    for jwk in found:
        key, why = _jwk_key(jwk)
        if key is None:
            problems.append(why)
        else:
            materials.append(key)
    distinct = {(k.public_numbers().n, k.public_numbers().e) for k in materials}
    if problems or len(distinct) != 1:
        if len(distinct) > 1:
            problems.append(f"{len(distinct)} different keys under kid {kid!r} (ambiguous)")
        v.add(name, False, expected=expected, found=f"kid {kid!r}", detail="; ".join(problems))
        return None, None
    key, jwk = materials[0], found[0]
    bits = key.key_size
    source = "x5c[0]" if "x5c" in jwk else "n/e"
    if bits >= MIN_RSA_BITS:
        v.add(name, True, expected=expected, found=f"kid {kid!r}: RSA-{bits} from {source}")
        return key, jwk
    if bits >= MIN_RSA_BITS_WEAK and policy.allow_rsa1024:
        v.add(name, True, expected=expected, found=f"kid {kid!r}: RSA-{bits} from {source}",
              detail=f"RSA-{bits} accepted by policy (allow_rsa1024 = true): a weak signing key")
        return key, jwk
    v.add(name, False, expected=expected, found=f"kid {kid!r}: RSA-{bits} from {source}",
          detail=f"RSA-{bits} is refused" + ("" if bits < MIN_RSA_BITS_WEAK else " (allow_rsa1024 = false)"))
    return None, jwk


def _jwk_key(jwk: Mapping[str, Any]) -> tuple[rsa.RSAPublicKey | None, str]:
    """The RSA public key of a JWK (x5c[0] and n/e must agree when both are present), or (None, why not)."""
    if jwk.get("kty") != "RSA":
        return None, f"kty {jwk.get('kty')!r} is not RSA"
    if jwk.get("use", "sig") != "sig":
        return None, f"use {jwk.get('use')!r} is not 'sig'"
    if jwk.get("alg", "RS256") != "RS256":
        return None, f"alg {jwk.get('alg')!r} is not RS256"
    from_cert: rsa.RSAPublicKey | None = None
    from_ne: rsa.RSAPublicKey | None = None
    if "x5c" in jwk:
        chain = jwk["x5c"]
        if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
            return None, "x5c is not a non-empty list of base64 certificates"
        try:
            cert = x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
        except (binascii.Error, ValueError) as exc:
            return None, f"x5c[0] is not a DER certificate: {exc}"
        pub = cert.public_key()
        if not isinstance(pub, rsa.RSAPublicKey):
            return None, f"x5c[0] holds a {type(pub).__name__}, not an RSA key"
        from_cert = pub
    if "n" in jwk or "e" in jwk:
        try:
            n = int.from_bytes(b64url_decode(jwk["n"]), "big")
            e = int.from_bytes(b64url_decode(jwk["e"]), "big")
            from_ne = rsa.RSAPublicNumbers(e, n).public_key()
        except (KeyError, TypeError, ValueError) as exc:
            return None, f"unusable n/e: {exc}"
    if from_cert is not None and from_ne is not None and from_cert.public_numbers() != from_ne.public_numbers():
        return None, "x5c[0] and n/e are different keys"
    key = from_cert or from_ne
    if key is None:
        return None, "neither x5c nor n/e"
    return key, ""


def _check_thumbprint(v: Verdict, key: rsa.RSAPublicKey | None, policy: MaaPolicy) -> None:
    name = "signing key pinned"
    if not policy.has_keys:
        v.add(name, False, expected="a key the policy names: [maa] key_thumbprints or jwks_file",
              found=jwk_thumbprint(key) if key is not None else "no key",
              detail="the policy names no MAA signing key; keys that come with the evidence are never trusted")
        return
    if not policy.key_thumbprints:
        # _check_key found it among policy.jwks: evidence keys enter only when pinned, and nothing is pinned.
        expected = f"a key of the policy's JWKS ({policy.jwks_source or 'jwks'})"
        if key is None:
            v.add(name, None, expected=expected, detail="not checked: no usable signing key")
        else:
            v.add(name, True, expected=expected, found=jwk_thumbprint(key))
        return
    expected = f"one of {len(policy.key_thumbprints)} pinned RFC 7638 thumbprints"
    if key is None:
        v.add(name, None, expected=expected, detail="not checked: no usable signing key")
        return
    tp = jwk_thumbprint(key)
    ok = any(hmac.compare_digest(tp, t) for t in policy.key_thumbprints)
    v.add(name, ok, expected=expected, found=tp, detail="" if ok else "the signing key is not pinned")


def _check_signature(v: Verdict, jwt: _Jwt, key: rsa.RSAPublicKey | None) -> None:
    name = "token signature"
    expected = "RSASSA-PKCS1-v1_5 / SHA-256 (RS256) over header.payload"
    if key is None:
        v.add(name, None, expected=expected, detail="not checked: no usable signing key or algorithm")
        return
    try:
        key.verify(jwt.signature, jwt.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        v.add(name, False, expected=expected, found="invalid")
        return
    v.add(name, True, expected=expected, found="valid")


def _check_issuer(
    v: Verdict, header: Mapping[str, Any], payload: Mapping[str, Any], jwk: Mapping[str, Any] | None,
    policy: MaaPolicy,
) -> None:
    iss = payload.get("iss")
    ok = isinstance(iss, str) and iss in policy.issuers
    v.add("issuer", ok, expected=f"one of {list(policy.issuers)}" if policy.issuers
          else "an allowed issuer (the list is empty: nothing is accepted)", found=repr(iss))
    # MAA publishes its keys at <iss>/certs; a token whose jku (or a key whose recorded jku) names another instance
    # was not issued by the instance it claims.
    want = f"{iss}/certs" if isinstance(iss, str) else None
    problems = []
    for where, value in (("header jku", header.get("jku")), ("key jku", jwk.get("jku") if jwk else None)):
        if value is not None and value != want:
            problems.append(f"{where} {value!r}")
    v.add("key set URL", not problems, expected=f"jku (when present) == {want!r}",
          found="; ".join(problems) or repr(header.get("jku")),
          detail="" if not problems else "the signing key belongs to another MAA instance")


def _check_validity(v: Verdict, payload: Mapping[str, Any], now: datetime.datetime) -> None:
    nbf, exp = payload.get("nbf"), payload.get("exp")
    t = now.timestamp()
    expected = f"nbf <= {now.astimezone(datetime.UTC).isoformat()} < exp"
    if not isinstance(nbf, (int, float)) or not isinstance(exp, (int, float)) \
            or isinstance(nbf, bool) or isinstance(exp, bool):
        v.add("validity", False, expected=expected, found=f"nbf {nbf!r}, exp {exp!r}", detail="nbf and exp required")
        return
    found = f"{_iso(nbf)} .. {_iso(exp)}"
    if t < nbf:
        v.add("validity", False, expected=expected, found=found, detail="not yet valid")
    elif t >= exp:
        v.add("validity", False, expected=expected, found=found, detail="expired")
    else:
        v.add("validity", True, expected=expected, found=found)


def _iso(t: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return repr(t)


# --- claims ----------------------------------------------------------------------------------------------------------


def _check_platform(v: Verdict, payload: Mapping[str, Any]) -> _Tee:
    att = payload.get("x-ms-attestation-type")
    expected = "x-ms-attestation-type sgx, sevsnpvm, tdxvm, or azurevm with x-ms-isolation-tee sevsnpvm/tdxvm"
    if att == "azurevm":
        iso = payload.get("x-ms-isolation-tee")
        iso_type = iso.get("x-ms-attestation-type") if isinstance(iso, dict) else None
        tee = _Tee("azurevm", iso_type if iso_type in ("sevsnpvm", "tdxvm") else None,
                   iso if isinstance(iso, dict) else {}, payload.get("x-ms-runtime"))
        found = f"azurevm, isolation {iso_type!r}"
    elif att in _TEE_CLAIMS:
        runtime = payload.get("x-ms-runtime")
        tee = _Tee(str(att), str(att), dict(payload), runtime)
        found = str(att)
    else:
        tee = _Tee(str(att), None, {}, None)
        found = repr(att)
    v.add("platform", tee.hardware is not None, expected=expected, found=found,
          detail="" if tee.hardware is not None else "unsupported attestation type")
    return tee


def _check_debug(v: Verdict, payload: Mapping[str, Any], tee: _Tee, policy: MaaPolicy) -> None:
    name = "debug"
    if tee.hardware is None:
        v.add(name, None, detail="not checked: unsupported platform")
        return
    claim = _TEE_CLAIMS[tee.hardware][1]
    value = tee.claims.get(claim)
    if tee.hardware == "tdxvm" and value is None and "dbgstat" in tee.claims:
        claim, value = "dbgstat", tee.claims["dbgstat"] != "disabled-since-boot"
    flags = {claim: value}
    if tee.attestation_type == "azurevm":
        flags.update({k: payload[k] for k in _AZUREVM_DEBUG if k in payload})
    found = ", ".join(f"{k}={json.dumps(val)}" for k, val in flags.items())
    if not isinstance(value, bool):
        v.add(name, False, expected=f"{claim} = false", found=found, detail="debug state not stated (fail closed)")
        return
    on = [k for k, val in flags.items() if val is not False]
    if policy.allow_debug:
        v.add(name, True, expected="debug off unless allowed", found=found,
              detail="debug allowed by policy (allow_debug = true)" if on else "")
        return
    v.add(name, not on, expected="every debug claim false", found=found,
          detail="" if not on else f"debuggable: {', '.join(on)}")


def _check_measurement(v: Verdict, tee: _Tee, policy: MaaPolicy) -> bytes | None:
    name = "measurement"
    if tee.hardware is None:
        v.add(name, None, detail="not checked: unsupported platform")
        return None
    claim = _TEE_CLAIMS[tee.hardware][0]
    raw = tee.claims.get(claim)
    try:
        value = bytes.fromhex(raw) if isinstance(raw, str) else None
    except ValueError:
        value = None
    if value is None or len(value) not in (32, 48):
        v.add(name, False, expected=f"{claim}: 32 or 48 bytes hex", found=repr(raw))
        return None
    found = f"{claim} {value.hex()}"
    if policy.any_measurement:
        v.add(name, True, expected="any", found=found, detail=ANY_MEASUREMENT)
        return value
    ok = any(hmac.compare_digest(value, m) for m in policy.measurements)
    v.add(name, ok, expected=f"one of {len(policy.measurements)} allowed measurements", found=found,
          detail="" if ok else ("allow list is empty: nothing is accepted" if not policy.measurements
                                else "not in the allow list"))
    return value


def _check_runtime_binding(v: Verdict, tee: _Tee, expected: bytes | None) -> None:
    name = "runtime key binding"
    candidates = _runtime_values(tee)
    where = ", ".join(w for w, _ in candidates) or "none"
    if expected is None:
        v.add(name, True, found=f"runtime data: {where}", detail=BINDING_SKIPPED)
        return
    expected_text = f"{expected.hex()} in the attested runtime data"
    if not candidates:
        v.add(name, False, expected=expected_text, found="no runtime data in the token",
              detail="the token does not bind any key")
        return
    for w, value in candidates:
        padded = w.endswith("user-data") and value.startswith(expected) and not any(value[len(expected):])
        if (len(value) == len(expected) and hmac.compare_digest(value, expected)) or (padded and expected):
            v.add(name, True, expected=expected_text, found=f"in {w}")
            return
    v.add(name, False, expected=expected_text, found=f"runtime data: {where}",
          detail="the token does not bind this key configuration / nonce")


def _runtime_values(tee: _Tee) -> list[tuple[str, bytes]]:
    """(where, bytes) for every place the attested runtime data can carry a binding value."""
    out: list[tuple[str, bytes]] = []
    if tee.hardware == "sgx" and tee.attestation_type == "sgx":
        ehd = tee.claims.get("x-ms-sgx-ehd")
        if isinstance(ehd, str):
            try:
                out.append(("x-ms-sgx-ehd", b64url_decode(ehd)))
            except ValueError:
                pass
    rt = tee.runtime
    if not isinstance(rt, dict):
        return out
    payload = rt.get("client-payload")
    if isinstance(payload, dict) and isinstance(payload.get("nonce"), str):
        nonce = _any_b64(payload["nonce"])
        if nonce is not None:
            out.append(("x-ms-runtime.client-payload.nonce", nonce))
    user = rt.get("user-data")
    if isinstance(user, str):
        try:
            out.append(("x-ms-runtime.user-data", bytes.fromhex(user)))
        except ValueError:
            pass
    keys = rt.get("keys")
    if isinstance(keys, list):
        for k in keys:
            if isinstance(k, dict):
                try:
                    out.append((f"x-ms-runtime.keys[{k.get('kid')!r}] thumbprint", _thumbprint_digest(k)))
                except (KeyError, TypeError, ValueError):
                    continue
    return out


def _any_b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return b64url_decode(text)
    except ValueError:
        return None


def _thumbprint_digest(key: rsa.RSAPublicKey | Mapping[str, Any]) -> bytes:
    if isinstance(key, rsa.RSAPublicKey):
        nums = key.public_numbers()
        members = {"e": _b64url(_uint(nums.e)), "kty": "RSA", "n": _b64url(_uint(nums.n))}
    else:
        kty = key["kty"]
        if kty not in _THUMBPRINT_MEMBERS:
            raise ValueError(f"no RFC 7638 members for kty {kty!r}")
        members = {m: key[m] for m in _THUMBPRINT_MEMBERS[kty]}
        if not all(isinstance(x, str) for x in members.values()):
            raise ValueError("JWK members must be strings")
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).digest()


def _uint(n: int) -> bytes:
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
