"""The client's Intel SGX policy: the ``[sgx]`` table of the policy TOML. Fail closed: with no allow-list entry nothing
is accepted.

Example::

    [sgx]
    mrenclaves = ["<64 hex>"]                                            # exact enclave builds
    signers = [{ mrsigner = "<64 hex>", isv_prod_id = 1, min_isv_svn = 3 }]   # or: any build by this signer,
                                                                         # this product, at least this SVN
    allowed_status = ["UpToDate"]                                        # DCAP TCB status; "Revoked" is refused
    allow_debug = false                                                  # never true in production

``any_measurement`` is not a TOML key: it comes only from ``veil attest verify --any-measurement`` (as for SEV-SNP and
TDX), and the verification document says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import EvidenceFormatError

__all__ = ["TCB_STATUSES", "SgxPolicy", "SgxSigner", "from_dict"]

#: The TCB statuses dcap-qvl reports; "Revoked" is never acceptable and cannot be allowed.
TCB_STATUSES: Final = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)
_KEYS: Final = frozenset({"mrenclaves", "signers", "allowed_status", "allow_debug"})
_SIGNER_KEYS: Final = frozenset({"mrsigner", "isv_prod_id", "min_isv_svn"})
_MR_SIZE: Final = 32


@dataclass(frozen=True)
class SgxSigner:
    """Accept any enclave signed by ``mrsigner`` with product id ``isv_prod_id`` and ISVSVN >= ``min_isv_svn``."""

    mrsigner: bytes
    isv_prod_id: int
    min_isv_svn: int


@dataclass(frozen=True)
class SgxPolicy:
    mrenclaves: tuple[bytes, ...] = ()
    signers: tuple[SgxSigner, ...] = ()
    any_measurement: bool = False  # only from `veil attest verify --any-measurement`; says so in the document
    allowed_status: tuple[str, ...] = ("UpToDate",)
    allow_debug: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SgxPolicy:
        """Build from the ``[sgx]`` TOML table; unknown keys are errors (a typo must not loosen the policy).

        Raises:
            EvidenceFormatError: an unknown key, a measurement that is not 64 hex digits, an ISV value outside
                0..65535, an unknown TCB status or "Revoked".
        """
        if not isinstance(d, Mapping):
            raise EvidenceFormatError(f"[sgx] must be a table, not {type(d).__name__}")
        if extra := set(d) - _KEYS:
            raise EvidenceFormatError(f"unknown keys in [sgx]: {sorted(extra)}")
        mrenclaves = d.get("mrenclaves", [])
        signers = d.get("signers", [])
        statuses = d.get("allowed_status", ["UpToDate"])
        allow_debug = d.get("allow_debug", False)
        if not isinstance(mrenclaves, list):
            raise EvidenceFormatError("[sgx] mrenclaves must be an array of 64-hex-digit strings")
        if not isinstance(signers, list):
            raise EvidenceFormatError("[sgx] signers must be an array of tables")
        if not isinstance(statuses, list) or not all(isinstance(s, str) for s in statuses):
            raise EvidenceFormatError("[sgx] allowed_status must be an array of strings")
        if bad := [s for s in statuses if s not in TCB_STATUSES]:
            raise EvidenceFormatError(f"[sgx] allowed_status: {bad} not among {list(TCB_STATUSES)}")
        if not isinstance(allow_debug, bool):
            raise EvidenceFormatError("[sgx] allow_debug must be true or false")
        return cls(
            mrenclaves=tuple(_measurement(m, f"mrenclaves[{i}]") for i, m in enumerate(mrenclaves)),
            signers=tuple(_signer(i, s) for i, s in enumerate(signers)),
            allowed_status=tuple(statuses),
            allow_debug=allow_debug,
        )


def from_dict(d: Mapping[str, Any]) -> SgxPolicy:
    """:meth:`SgxPolicy.from_dict`, for callers that build each platform's policy with a module-level function."""
    return SgxPolicy.from_dict(d)


def _measurement(value: Any, what: str) -> bytes:
    try:
        out = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        out = b""
    if len(out) != _MR_SIZE:
        raise EvidenceFormatError(f"[sgx] {what} must be {2 * _MR_SIZE} hex digits")
    return out


def _u16(entry: Mapping[str, Any], key: str, i: int) -> int:
    value = entry.get(key)
    if type(value) is not int or not 0 <= value <= 0xFFFF:
        raise EvidenceFormatError(f"[sgx] signers[{i}].{key} must be an integer 0..65535")
    return value


def _signer(i: int, entry: Any) -> SgxSigner:
    if not isinstance(entry, Mapping):
        raise EvidenceFormatError(f"[sgx] signers[{i}] must be a table {{mrsigner, isv_prod_id, min_isv_svn}}")
    if set(entry) != _SIGNER_KEYS:
        raise EvidenceFormatError(
            f"[sgx] signers[{i}] must have exactly the keys {sorted(_SIGNER_KEYS)}, has {sorted(entry)}"
        )
    return SgxSigner(
        mrsigner=_measurement(entry["mrsigner"], f"signers[{i}].mrsigner"),
        isv_prod_id=_u16(entry, "isv_prod_id", i),
        min_isv_svn=_u16(entry, "min_isv_svn", i),
    )
