"""The client's AWS Nitro Enclaves policy: the ``[nitro]`` table of the policy TOML. Fail closed: an empty allow list
accepts nothing.

Example::

    [nitro]
    pcrs = [{ 0 = "<96 hex>", 1 = "<96 hex>", 2 = "<96 hex>" }]   # one entry per accepted enclave image;
                                                                    # every entry must pin PCR0 (the EIF hash)
    allow_debug = false                                             # never true in production
    binding_field = "user_data"                                     # or "public_key": where the key binding lives

``any_measurement`` is not a TOML key: it comes only from ``veil attest verify --any-measurement`` (as for SEV-SNP and
TDX), and the verification document says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..errors import EvidenceFormatError

__all__ = ["BINDING_FIELDS", "NitroPolicy", "from_dict"]

#: Document fields the key binding may be read from.
BINDING_FIELDS: Final = ("user_data", "public_key")
_PCR_SIZE: Final = 48
_MAX_PCR_INDEX: Final = 31
_KEYS: Final = frozenset({"pcrs", "allow_debug", "binding_field"})


@dataclass(frozen=True)
class NitroPolicy:
    #: Allow list: an entry {PCR index: 48-byte value} matches when every PCR it lists equals the document's.
    pcrs: tuple[dict[int, bytes], ...] = ()
    any_measurement: bool = False  # only from `veil attest verify --any-measurement`; says so in the document
    allow_debug: bool = False
    binding_field: str = "user_data"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NitroPolicy:
        """Build from the ``[nitro]`` TOML table; unknown keys are errors (a typo must not loosen the policy).

        Raises:
            EvidenceFormatError: an unknown key, a PCR index outside 0..31, a value that is not 96 hex digits, an
                entry without PCR0, or an unknown binding field.
        """
        if not isinstance(d, Mapping):
            raise EvidenceFormatError(f"[nitro] must be a table, not {type(d).__name__}")
        if extra := set(d) - _KEYS:
            raise EvidenceFormatError(f"unknown keys in [nitro]: {sorted(extra)}")
        entries = d.get("pcrs", [])
        if not isinstance(entries, list):
            raise EvidenceFormatError("[nitro] pcrs must be an array of tables {index = \"<96 hex>\"}")
        allow_debug = d.get("allow_debug", False)
        binding_field = d.get("binding_field", "user_data")
        if not isinstance(allow_debug, bool):
            raise EvidenceFormatError("[nitro] allow_debug must be true or false")
        if binding_field not in BINDING_FIELDS:
            raise EvidenceFormatError(f"[nitro] binding_field must be one of {list(BINDING_FIELDS)}")
        return cls(
            pcrs=tuple(_entry(i, e) for i, e in enumerate(entries)),
            allow_debug=allow_debug,
            binding_field=binding_field,
        )


def _entry(i: int, entry: Any) -> dict[int, bytes]:
    if not isinstance(entry, Mapping) or not entry:
        raise EvidenceFormatError(f"[nitro] pcrs[{i}] must be a non-empty table {{index = \"<96 hex>\"}}")
    out: dict[int, bytes] = {}
    for key, value in entry.items():
        # TOML keys are strings: "0".."31", decimal, no sign, no leading zeros.
        if not isinstance(key, str) or not key.isascii() or not key.isdigit() or str(int(key)) != key \
                or int(key) > _MAX_PCR_INDEX:
            raise EvidenceFormatError(f"[nitro] pcrs[{i}]: PCR index {key!r} is not a decimal 0..{_MAX_PCR_INDEX}")
        try:
            pcr = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            pcr = b""
        if len(pcr) != _PCR_SIZE:
            raise EvidenceFormatError(f"[nitro] pcrs[{i}]: PCR{key} must be {2 * _PCR_SIZE} hex digits")
        out[int(key)] = pcr
    if 0 not in out:
        raise EvidenceFormatError(f"[nitro] pcrs[{i}] does not pin PCR0 (the enclave image)")
    return dict(sorted(out.items()))


def from_dict(d: Mapping[str, Any]) -> NitroPolicy:
    """:meth:`NitroPolicy.from_dict`, for callers that build each platform's policy with a module-level function."""
    return NitroPolicy.from_dict(d)
