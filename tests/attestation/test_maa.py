"""Microsoft Azure Attestation tokens against the real samples in ``$VEIL_SHARED_DATA/evidence/azure-maa``.

Each token verifies at its documented time with its instance's keys, and fails outside [nbf, exp), with a changed
claim or signature, with another key under its kid, and with every policy that should refuse it.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from enclave.attestation.azure import MaaPolicy
from enclave.attestation.azure.maa import jwk_thumbprint, verify_maa_token
from enclave.attestation.errors import EvidenceFormatError
from enclave.attestation.result import Verdict

SGX_ISS = "https://sharedeus.eus.attest.azure.net"
CVM_ISS = "https://sharedweu.weu.attest.azure.net"
SGX_KID = "rFl9xM+g7TvX63y0iseZtIn20MD5SYAnGblKFasau8I="
CVM_KID = "dRKh+hBcWUfQimSl3Iv6ZhStW3TSOt0ThwiTgUUqZAo="
SGX_NBF, SGX_EXP = 1695737747, 1695766547
CVM_NBF, CVM_EXP = 1680173374, 1680202174
MRENCLAVE = "f56735aa42563627a832e0c7ba9911382eb68afed75830b3f97266f3e67bdc99"
SNP_LAUNCH = "8962535933f5c4b429ec41d6550c187c163aa76f3be1f8d750a272a9d8995023e8286a2e431a96c36087ac46d4188676"
SGX_EHD = b"This is some runtime data"
CVM_NONCE = b"ADE0101"  # x-ms-runtime.client-payload.nonce "QURFMDEwMQ=="
EVERY_CHECK = ["token format", "algorithm", "signing key", "signing key pinned", "token signature", "issuer",
               "key set URL", "validity", "platform", "debug", "measurement", "runtime key binding"]


def at(unix: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC)


@dataclasses.dataclass(frozen=True)
class Token:
    token: str
    jwks: dict[str, Any]
    policy: MaaPolicy
    when: int
    binding: bytes

    def verify(self, *, token: str | None = None, jwks: dict[str, Any] | None = None, when: int | None = None,
               binding: bytes | None | str = "sample", evidence_jwks: dict[str, Any] | None = None,
               **policy: Any) -> Verdict:
        """``jwks``: the keys the policy trusts (its jwks_file); ``evidence_jwks``: keys that came with the token."""
        expected = self.binding if binding == "sample" else binding
        assert expected is None or isinstance(expected, bytes)
        trusted = tuple((self.jwks if jwks is None else jwks)["keys"])
        pol = dataclasses.replace(self.policy, **{"jwks": trusted, **policy})
        return verify_maa_token(token or self.token, evidence_jwks, pol, now=at(self.when if when is None else when),
                                expected_runtime_key=expected)


@pytest.fixture(scope="session")
def maa_dir(evidence_dir: Path) -> Path:
    return evidence_dir / "azure-maa"


@pytest.fixture(scope="session")
def sgx(maa_dir: Path) -> Token:
    d = maa_dir / "sgx-sharedeus-teaclave"
    return Token((d / "token.jwt").read_text(), json.loads((d / "jwks.json").read_text()),
                 MaaPolicy(issuers=(SGX_ISS,), measurements=(bytes.fromhex(MRENCLAVE),)), SGX_NBF, SGX_EHD)


@pytest.fixture(scope="session")
def cvm(maa_dir: Path) -> Token:
    d = maa_dir / "cvm-snp-sharedweu-guestattestation"
    return Token((d / "token.jwt").read_text(), json.loads((d / "maa_signing_keys.json").read_text()),
                 MaaPolicy(issuers=(CVM_ISS,), measurements=(bytes.fromhex(SNP_LAUNCH),)), CVM_NBF, CVM_NONCE)


def failed(v: Verdict) -> set[str]:
    return {c.name for c in v.checks if c.ok is not True}


def check(v: Verdict, name: str) -> tuple[bool | None, str, str]:
    (c,) = [c for c in v.checks if c.name == name]
    return c.ok, c.found, c.detail


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def edit_part(token: str, index: int, old: bytes, new: bytes) -> str:
    parts = token.strip().split(".")
    raw = unb64url(parts[index])
    assert raw.count(old) == 1
    parts[index] = b64url(raw.replace(old, new))
    return ".".join(parts)


def with_key(jwks: dict[str, Any], kid: str, key: dict[str, Any]) -> dict[str, Any]:
    """The JWKS with the key under ``kid`` replaced by ``key`` (keeping ``kid``)."""
    out = copy.deepcopy(jwks)
    out["keys"] = [k for k in out["keys"] if k.get("kid") != kid] + [{**key, "kid": kid}]
    return out


# --- the real tokens ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgx", "cvm"])
def test_real_token_passes_at_its_time(request: pytest.FixtureRequest, name: str) -> None:
    t: Token = request.getfixturevalue(name)
    v = t.verify()
    assert v.ok, v.document()
    assert [c.name for c in v.checks] == EVERY_CHECK
    assert v.platform == "maa"
    exp = SGX_EXP if name == "sgx" else CVM_EXP
    assert t.verify(when=exp - 1).ok  # the last second of its life


def test_sgx_claims(sgx: Token) -> None:
    v = sgx.verify()
    assert v.measurement == bytes.fromhex(MRENCLAVE) and MRENCLAVE.endswith("67bdc99")  # as SOURCE.md documents
    assert v.claims["attestation_type"] == "sgx" and v.claims["hardware"] == "sgx"
    assert v.claims["iss"] == SGX_ISS and v.claims["kid"] == SGX_KID
    assert (v.claims["nbf"], v.claims["exp"]) == (SGX_NBF, SGX_EXP) and SGX_EXP - SGX_NBF == 8 * 3600
    assert check(v, "signing key")[1].endswith("RSA-2048 from x5c[0]")
    assert check(v, "runtime key binding")[1] == "in x-ms-sgx-ehd"
    # MAA's own consistency: report_data = SHA-256(ehd) || 32 zero bytes (SOURCE.md: "checked: equal")
    payload = json.loads(unb64url(sgx.token.split(".")[1]))
    assert payload["x-ms-sgx-report-data"] == (hashlib.sha256(SGX_EHD).digest() + bytes(32)).hex()
    json.dumps(v.to_json())


def test_cvm_claims(cvm: Token) -> None:
    v = cvm.verify()
    assert v.measurement == bytes.fromhex(SNP_LAUNCH) and SNP_LAUNCH.startswith("8962535933f5c4b4")
    assert v.claims["attestation_type"] == "azurevm" and v.claims["hardware"] == "sevsnpvm"
    assert v.claims["compliance_status"] == "azure-compliant-cvm"
    assert v.claims["policy_hash"] == "wm9mHlvTU82e8UqoOy1Yj1FBRSNkfe99-69IYDq9eWs"
    assert check(v, "signing key")[1].endswith("RSA-2048 from n/e")
    assert check(v, "runtime key binding")[1] == "in x-ms-runtime.client-payload.nonce"
    debug = check(v, "debug")[1]
    assert "x-ms-sevsnpvm-is-debuggable=false" in debug and "x-ms-azurevm-kerneldebug-enabled=false" in debug


@pytest.mark.parametrize(("name", "nbf", "exp"), [("sgx", SGX_NBF, SGX_EXP), ("cvm", CVM_NBF, CVM_EXP)])
def test_outside_nbf_exp_fails(request: pytest.FixtureRequest, name: str, nbf: int, exp: int) -> None:
    t: Token = request.getfixturevalue(name)
    for when, why in ((nbf - 1, "not yet valid"), (exp, "expired"), (exp + 1, "expired"),
                      (int(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC).timestamp()), "expired")):
        v = t.verify(when=when)
        assert failed(v) == {"validity"}, when
        assert check(v, "validity")[2] == why


# --- tampering ------------------------------------------------------------------------------------------------------


def test_changed_claim_fails_signature(sgx: Token, cvm: Token) -> None:
    v = sgx.verify(token=edit_part(sgx.token, 1, b'"x-ms-sgx-svn":1', b'"x-ms-sgx-svn":2'))
    assert failed(v) == {"token signature"}
    # a claim the policy reads: the measurement changes and neither the signature nor the allow list accepts it
    v = cvm.verify(token=edit_part(cvm.token, 1, SNP_LAUNCH.encode(), SNP_LAUNCH[:-1].encode() + b"7"))
    assert failed(v) == {"token signature", "measurement"}
    # the nonce the binding rests on
    v = cvm.verify(token=edit_part(cvm.token, 1, b"QURFMDEwMQ==", b"QURFMDEwMg=="))
    assert failed(v) == {"token signature", "runtime key binding"}


@pytest.mark.parametrize("index", [0, 100, 255])
def test_flipped_signature_bit_fails(sgx: Token, cvm: Token, index: int) -> None:
    for t in (sgx, cvm):
        head, payload, sig = t.token.strip().split(".")
        raw = bytearray(unb64url(sig))
        raw[index] ^= 0x80
        v = t.verify(token=f"{head}.{payload}.{b64url(bytes(raw))}")
        assert failed(v) == {"token signature"}
        assert check(v, "token signature")[1] == "invalid"


def test_algorithm_confusion_fails(sgx: Token) -> None:
    for alg in (b'"none"', b'"HS256"', b'"RS384"'):
        v = sgx.verify(token=edit_part(sgx.token, 0, b'"RS256"', alg))
        assert failed(v) == {"algorithm", "token signature"}
        assert check(v, "token signature")[0] is None  # never attempted with a non-RS256 header
    v = sgx.verify(token=edit_part(sgx.token, 0, b'"typ":"JWT"', b'"typ":"JWT","crit":["exp"]'))
    assert "algorithm" in failed(v)


def test_unknown_kid_fails(sgx: Token) -> None:
    jwks = {"keys": [k for k in sgx.jwks["keys"] if k["kid"] != SGX_KID]}
    v = sgx.verify(jwks=jwks)
    assert failed(v) == {"signing key", "signing key pinned", "token signature"}
    assert "not among the trusted keys" in check(v, "signing key")[1]


def test_another_maa_key_under_the_kid_fails(sgx: Token, cvm: Token) -> None:
    other = next(k for k in sgx.jwks["keys"] if k["kid"].startswith("dSsaF5"))  # "Microsoft Azure Attestation 2020"
    v = sgx.verify(jwks=with_key(sgx.jwks, SGX_KID, other))
    assert failed(v) == {"token signature"}
    # the instance's third key (self-signed, like the real one) is RSA-1024: refused before any signature check
    other = next(k for k in sgx.jwks["keys"] if k["kid"].startswith("lH/VQ9"))
    v = sgx.verify(jwks=with_key(sgx.jwks, SGX_KID, other))
    assert failed(v) == {"signing key", "signing key pinned", "token signature"}
    assert check(v, "signing key")[1].endswith("RSA-1024 from x5c[0]")
    assert failed(sgx.verify(jwks=with_key(sgx.jwks, SGX_KID, other), allow_rsa1024=True)) == {"token signature"}
    other = next(k for k in cvm.jwks["keys"] if k["kid"].startswith("Ml5Yv3"))  # another sharedweu RSA-2048 key
    v = cvm.verify(jwks=with_key(cvm.jwks, CVM_KID, other))
    assert failed(v) == {"token signature"}


def test_ambiguous_kid_fails(cvm: Token) -> None:
    other = next(k for k in cvm.jwks["keys"] if k["kid"].startswith("Ml5Yv3"))
    jwks = copy.deepcopy(cvm.jwks)
    jwks["keys"].append({**other, "kid": CVM_KID})
    v = cvm.verify(jwks=jwks)
    assert "ambiguous" in check(v, "signing key")[2]
    assert failed(v) == {"signing key", "signing key pinned", "token signature"}
    # the same key listed twice is not ambiguous
    jwks = copy.deepcopy(cvm.jwks)
    jwks["keys"].append(next(k for k in cvm.jwks["keys"] if k["kid"] == CVM_KID))
    assert cvm.verify(jwks=jwks).ok


def test_x5c_and_n_e_must_agree(sgx: Token, cvm: Token) -> None:
    ne = next(k for k in cvm.jwks["keys"] if k["kid"] == CVM_KID)
    mine = next(k for k in sgx.jwks["keys"] if k["kid"] == SGX_KID)
    v = sgx.verify(jwks=with_key(sgx.jwks, SGX_KID, {**mine, "n": ne["n"], "e": ne["e"]}))
    assert "x5c[0] and n/e are different keys" in check(v, "signing key")[2]
    assert not v.ok


def test_rsa1024_keys_need_allow_rsa1024(cvm: Token) -> None:
    weak = [k for k in cvm.jwks["keys"] if len(unb64url(k["n"])) == 128]
    assert len(weak) == 6  # SOURCE.md: 6 of the 16 keys are RSA-1024
    jwks = with_key(cvm.jwks, CVM_KID, weak[0])
    v = cvm.verify(jwks=jwks)
    assert failed(v) == {"signing key", "signing key pinned", "token signature"}
    assert "RSA-1024 is refused (allow_rsa1024 = false)" in check(v, "signing key")[2]
    v = cvm.verify(jwks=jwks, allow_rsa1024=True)
    ok, found, detail = check(v, "signing key")
    assert ok is True and "RSA-1024" in found and "allow_rsa1024 = true" in detail
    assert failed(v) == {"token signature"}  # still not the key that signed this token


def test_key_thumbprint_pin(cvm: Token, sgx: Token) -> None:
    tp = cvm.verify().claims["key_thumbprint"]
    assert cvm.verify(key_thumbprints=(tp,)).ok
    v = cvm.verify(key_thumbprints=(sgx.verify().claims["key_thumbprint"],))
    assert failed(v) == {"signing key pinned"}
    ok, found, _ = check(cvm.verify(), "signing key pinned")  # no pins: the key is one of the policy's own JWKS
    assert ok is True and found == tp
    # Pins alone: the key material may come with the token (a bundle's JWKS), and only pinned keys are taken from it.
    assert cvm.verify(jwks={"keys": []}, evidence_jwks=cvm.jwks, key_thumbprints=(tp,)).ok
    v = cvm.verify(jwks={"keys": []}, evidence_jwks=cvm.jwks, key_thumbprints=(sgx.verify().claims["key_thumbprint"],))
    assert failed(v) == {"signing key", "signing key pinned", "token signature"}
    assert "0 pinned ones that came with the evidence" in check(v, "signing key")[1]


def test_keys_that_come_with_the_token_are_never_trusted(cvm: Token) -> None:
    """The genuine instance JWKS beside a genuine token proves nothing by itself: the policy must name the keys."""
    v = cvm.verify(jwks={"keys": []}, evidence_jwks=cvm.jwks)
    assert failed(v) == {"signing key", "signing key pinned", "token signature"}
    assert "keys that come with the evidence are never trusted" in check(v, "signing key pinned")[2]


def test_rfc7638_thumbprint_vector() -> None:
    """RFC 7638 section 3.1: the example RSA key's SHA-256 thumbprint."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjB"
        "ZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8"
        "KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_"
        "xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": n}
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# --- policy ---------------------------------------------------------------------------------------------------------


def test_issuer_policy(sgx: Token, cvm: Token) -> None:
    assert failed(sgx.verify(issuers=(CVM_ISS,))) == {"issuer"}
    v = sgx.verify(issuers=())
    assert failed(v) == {"issuer"} and "nothing is accepted" in v.document()
    assert sgx.verify(issuers=(CVM_ISS, SGX_ISS)).ok
    # a sharedweu token checked against a sharedeus2 key: the key's recorded jku names another instance
    ne = next(k for k in cvm.jwks["keys"] if k["kid"] == CVM_KID)
    v = cvm.verify(jwks=with_key(cvm.jwks, CVM_KID, {**ne, "jku": "https://sharedeus2.eus2.attest.azure.net/certs"}))
    assert failed(v) == {"key set URL"}


def test_measurement_policy(sgx: Token, cvm: Token) -> None:
    assert failed(sgx.verify(measurements=(bytes.fromhex(SNP_LAUNCH),))) == {"measurement"}
    v = cvm.verify(measurements=())
    assert failed(v) == {"measurement"} and "allow list is empty" in check(v, "measurement")[2]
    v = cvm.verify(measurements=(), any_measurement=True)
    assert v.ok and "NOT pinned" in check(v, "measurement")[2]


def test_runtime_binding(sgx: Token, cvm: Token) -> None:
    for t in (sgx, cvm):
        v = t.verify(binding=b"another key configuration")
        assert failed(v) == {"runtime key binding"}
        v = t.verify(binding=None)
        assert v.ok and check(v, "runtime key binding")[2] == "binding skipped (--no-binding)"
        assert failed(t.verify(binding=b"")) == {"runtime key binding"}
    # the guest's ephemeral key in x-ms-runtime.keys binds by its RFC 7638 thumbprint
    payload = json.loads(unb64url(cvm.token.split(".")[1]))
    (key,) = payload["x-ms-runtime"]["keys"]
    digest = unb64url(jwk_thumbprint(key))
    v = cvm.verify(binding=digest)
    assert v.ok and check(v, "runtime key binding")[1] == "in x-ms-runtime.keys['TpmEphemeralEncryptionKey'] thumbprint"
    # the HCL's own AK sits in x-ms-isolation-tee.x-ms-runtime: not a binding the guest application chose
    (ak,) = payload["x-ms-isolation-tee"]["x-ms-runtime"]["keys"]
    assert failed(cvm.verify(binding=unb64url(jwk_thumbprint(ak)))) == {"runtime key binding"}


def test_malformed_tokens_raise(sgx: Token) -> None:
    head, payload, sig = sgx.token.strip().split(".")
    duplicate_alg = b64url(b'{"alg":"RS256","alg":"none"}')
    for bad in (f"{head}.{payload}", f"{head}.{payload}.{sig}.x", f"{head}.{payload}+.{sig}",
                f"{b64url(b'[1]')}.{payload}.{sig}", f"{head}.{b64url(b'{not json')}.{sig}",
                f"{duplicate_alg}.{payload}.{sig}"):
        with pytest.raises(EvidenceFormatError):
            sgx.verify(token=bad)
    with pytest.raises(EvidenceFormatError, match="keys"):
        sgx.verify(evidence_jwks={"key": []})
    with pytest.raises(ValueError, match="timezone"):
        verify_maa_token(sgx.token, sgx.jwks, sgx.policy, now=datetime.datetime(2023, 9, 26),
                         expected_runtime_key=None)


def test_maa_policy_from_toml(cvm: Token) -> None:
    data = tomllib.loads(
        "[maa]\n"
        f'issuers = ["{CVM_ISS}"]\n'
        f'measurements = ["{SNP_LAUNCH}", "{MRENCLAVE}"]\n'
        "allow_debug = false\nallow_rsa1024 = true\n"
        f'key_thumbprints = ["{cvm.verify().claims["key_thumbprint"]}"]\n'
    )
    p = MaaPolicy.from_dict(data["maa"])
    assert p.issuers == (CVM_ISS,) and p.measurements == (bytes.fromhex(SNP_LAUNCH), bytes.fromhex(MRENCLAVE))
    assert p.allow_rsa1024 and not p.allow_debug and not p.any_measurement
    assert verify_maa_token(cvm.token, cvm.jwks, p, now=at(CVM_NBF), expected_runtime_key=CVM_NONCE).ok
    assert MaaPolicy.from_dict({}) == MaaPolicy()
    for bad, match in (({"issuer": []}, "unknown keys"), ({"any_measurement": True}, "unknown keys"),
                       ({"issuers": ["http://x"]}, "https"), ({"issuers": "https://x"}, "list"),
                       ({"measurements": ["00" * 20]}, "20 bytes"), ({"allow_debug": "yes"}, "true or false"),
                       ({"key_thumbprints": ["abc"]}, "43 base64url")):
        with pytest.raises(EvidenceFormatError, match=match):
            MaaPolicy.from_dict(bad)
