"""The client's attestation policy (TOML). Fail closed: an empty allow list accepts nothing.

Example::

    platforms = ["sev-snp", "tdx"]          # which CPU TEEs are acceptable
    require_gpu = false                      # demand NVIDIA CC evidence for every request path

    [sev-snp]
    measurements = ["<96 hex chars>"]        # launch digests (sev-snp-measure)
    min_tcb = { bootloader = 3, tee = 0, snp = 8, microcode = 115 }
    vmpl = [0]
    allow_vlek = true
    allow_debug = false                      # never true in production
    allow_migration_agent = false

    [tdx]
    measurements = [{ mrtd = "<96 hex>", rtmr0 = "<96 hex>", rtmr1 = "<96 hex>", rtmr2 = "<96 hex>" }]
    allowed_status = ["UpToDate"]
    allow_debug = false

    [maa]                                    # Microsoft Azure Attestation tokens (see azure/policy.py)
    issuers = ["https://sharedeus.eus.attest.azure.net"]
    jwks_file = "maa-certs.json"             # or key_thumbprints: one of them is required (keys are never
                                             # taken from the evidence); relative to this file

    [nvidia]
    allowed_driver_versions = ["550.54.15"]
    allowed_vbios_versions = ["96.00.74.00.1A"]
    accept_unverifiable_cc_mode = false      # Hopper evidence cannot show CC mode; true accepts that, visibly

    [config]                                 # values of the gateway's bound configuration (bundle "config")
    require = { key_origin = "generated", require_date = true, api_keys_required = false }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bundle import CONFIG_FIELDS, ConfigValue
from .errors import EvidenceFormatError


@dataclass(frozen=True)
class SnpPolicy:
    measurements: tuple[bytes, ...] = ()
    any_measurement: bool = False  # only from `veil attest verify --any-measurement`; says so in the document
    min_tcb: dict[str, int] = field(default_factory=dict)
    vmpl: tuple[int, ...] = (0,)
    allow_vlek: bool = True
    allow_debug: bool = False
    allow_migration_agent: bool = False


@dataclass(frozen=True)
class TdxPolicy:
    measurements: tuple[dict[str, bytes], ...] = ()
    any_measurement: bool = False
    allowed_status: tuple[str, ...] = ("UpToDate",)
    allow_debug: bool = False


@dataclass(frozen=True)
class NvidiaPolicy:
    allowed_driver_versions: tuple[str, ...] = ()
    allowed_vbios_versions: tuple[str, ...] = ()
    any_version: bool = False
    #: Hopper evidence has no CC on/off field; without RIM comparison the check cannot pass. An operator who accepts
    #: that risk says so here, and the verification document says it was accepted, not verified.
    accept_unverifiable_cc_mode: bool = False


@dataclass(frozen=True)
class ConfigPolicy:
    """``[config]``: values the gateway's bound configuration must have (equality; a missing value fails)."""

    require: dict[str, ConfigValue] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> ConfigPolicy:
        if not isinstance(data, dict):
            raise EvidenceFormatError("[config] must be a table")
        if extra := set(data) - {"require"}:
            raise EvidenceFormatError(f"unknown keys in [config]: {sorted(extra)}")
        require = data.get("require", {})
        if not isinstance(require, dict):
            raise EvidenceFormatError("[config] require must be a table of name = value")
        for name, value in require.items():
            if name not in CONFIG_FIELDS:
                raise EvidenceFormatError(f"unknown configuration name in [config] require: {name!r} (known: "
                                          f"{', '.join(sorted(CONFIG_FIELDS))})")
            types = CONFIG_FIELDS[name]
            # bool is an int in Python: a boolean value must be asked for with a boolean, and a number with a number
            if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
                raise EvidenceFormatError(f"[config] require {name} = {value!r}: expected "
                                          + " or ".join(t.__name__ for t in types if t is not type(None)))
        return cls(require=dict(require))


def _azure_policy() -> Any:
    from .azure.policy import AzurePolicy

    return AzurePolicy()


def _maa_policy() -> Any:
    from .azure.policy import MaaPolicy

    return MaaPolicy()


def _nitro_policy() -> Any:
    from .nitro import NitroPolicy

    return NitroPolicy()


def _sgx_policy() -> Any:
    from .sgx import SgxPolicy

    return SgxPolicy()


@dataclass(frozen=True)
class Policy:
    platforms: tuple[str, ...] = ("sev-snp", "tdx")
    require_gpu: bool = False
    snp: SnpPolicy = field(default_factory=SnpPolicy)
    tdx: TdxPolicy = field(default_factory=TdxPolicy)
    nvidia: NvidiaPolicy = field(default_factory=NvidiaPolicy)
    #: ``[config]``: required values of the gateway's bound configuration
    config: ConfigPolicy = field(default_factory=ConfigPolicy)
    #: ``[azure]``: vTPM PCR allow lists for Azure confidential VMs (az-snp-vtpm, az-tdx-vtpm)
    azure: Any = None
    #: ``[maa]``: Microsoft Azure Attestation token issuers, measurements, key pins
    maa: Any = None
    #: ``[nitro]``: AWS Nitro Enclaves PCR allow lists
    nitro: Any = None
    #: ``[sgx]``: MRENCLAVE / MRSIGNER allow lists
    sgx: Any = None
    # The four above are None until a policy file names them: their verifiers (and cbor2, the Azure and SGX code)
    # are imported only by a client that meets that platform. ``for_platform`` gives the effective one.

    def for_platform(self, name: str) -> Any:
        """The policy of ``name`` ("azure", "maa", "nitro", "sgx"); the fail-closed default when not configured."""
        value = getattr(self, name)
        return value if value is not None else {"azure": _azure_policy, "maa": _maa_policy,
                                                "nitro": _nitro_policy, "sgx": _sgx_policy}[name]()

    @classmethod
    def load(cls, path: str | Path, *, maa_jwks_file: str | Path | None = None) -> Policy:
        """Read a TOML policy file; unknown keys are errors (a typo must not loosen the policy).

        Files the policy names (``[maa] jwks_file``) are read relative to the policy's folder. ``maa_jwks_file``
        (``veil attest verify --jwks``) stands for ``[maa] jwks_file``, given on the command line instead."""
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise EvidenceFormatError(f"cannot read policy {path}: {exc}") from None
        return cls.from_dict(data, base=Path(path).resolve().parent, maa_jwks_file=maa_jwks_file)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, base: Path | None = None,
                  maa_jwks_file: str | Path | None = None) -> Policy:
        """A policy from its TOML data; ``base`` is the folder relative file names are read from (default: the
        current directory); ``maa_jwks_file`` as for :meth:`load`."""
        if maa_jwks_file is not None:
            if not isinstance(data.get("maa", {}), dict):
                raise EvidenceFormatError("[maa] must be a table")
            data = {**data, "maa": {**data.get("maa", {}), "jwks_file": str(Path(maa_jwks_file).resolve())}}
        known = {"platforms", "require_gpu", "sev-snp", "tdx", "nvidia", "config", "azure", "maa", "nitro", "sgx"}
        if extra := set(data) - known:
            raise EvidenceFormatError(f"unknown policy keys: {sorted(extra)}")
        snp = dict(data.get("sev-snp", {}))
        tdx = dict(data.get("tdx", {}))
        nv = dict(data.get("nvidia", {}))
        try:
            policy = cls(
                platforms=tuple(data.get("platforms", ("sev-snp", "tdx"))),
                require_gpu=bool(data.get("require_gpu", False)),
                snp=SnpPolicy(
                    measurements=tuple(bytes.fromhex(m) for m in snp.pop("measurements", [])),
                    min_tcb={k: int(v) for k, v in snp.pop("min_tcb", {}).items()},
                    vmpl=tuple(int(v) for v in snp.pop("vmpl", [0])),
                    allow_vlek=bool(snp.pop("allow_vlek", True)),
                    allow_debug=bool(snp.pop("allow_debug", False)),
                    allow_migration_agent=bool(snp.pop("allow_migration_agent", False)),
                ),
                tdx=TdxPolicy(
                    measurements=tuple({k: bytes.fromhex(v) for k, v in m.items()} for m in tdx.pop("measurements", [])),
                    allowed_status=tuple(tdx.pop("allowed_status", ["UpToDate"])),
                    allow_debug=bool(tdx.pop("allow_debug", False)),
                ),
                nvidia=NvidiaPolicy(
                    allowed_driver_versions=tuple(nv.pop("allowed_driver_versions", [])),
                    allowed_vbios_versions=tuple(nv.pop("allowed_vbios_versions", [])),
                    accept_unverifiable_cc_mode=bool(nv.pop("accept_unverifiable_cc_mode", False)),
                ),
                config=ConfigPolicy.from_dict(data.get("config", {})),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise EvidenceFormatError(f"invalid policy: {exc}") from None
        for name, rest in (("sev-snp", snp), ("tdx", tdx), ("nvidia", nv)):
            if rest:
                raise EvidenceFormatError(f"unknown keys in [{name}]: {sorted(rest)}")
        from dataclasses import replace

        tables: dict[str, Any] = {}
        if "azure" in data or "maa" in data:
            from .azure.policy import AzurePolicy, MaaPolicy

            tables["azure"] = AzurePolicy.from_dict(data.get("azure", {}))
            tables["maa"] = MaaPolicy.from_dict(data.get("maa", {}), base=base)
        if "nitro" in data:
            from .nitro import NitroPolicy

            tables["nitro"] = NitroPolicy.from_dict(data["nitro"])
        if "sgx" in data:
            from .sgx import SgxPolicy

            tables["sgx"] = SgxPolicy.from_dict(data["sgx"])
        policy = replace(policy, **tables)
        if "maa" in policy.platforms or "maa" in data:
            maa = policy.for_platform("maa")
            # An MAA token is only as good as the key that signed it, and a bundle's JWKS is as unsigned as the token:
            # a policy that would accept tokens must name the keys itself, or a relay could sign its own.
            if ("maa" in policy.platforms or maa.issuers) and not maa.has_keys:
                raise EvidenceFormatError(
                    "the policy accepts MAA tokens but names no MAA signing key: set [maa] key_thumbprints or "
                    "[maa] jwks_file (keys that come with the evidence are never trusted)")
        return policy
