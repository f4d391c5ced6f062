"""The client's attestation policy (TOML). Fail closed: an empty allow list accepts nothing.

Example::

    platforms = ["sev-snp", "tdx"]          # which CPU TEEs are acceptable
    require_gpu = false                      # demand NVIDIA CC evidence for every request path
    require_post_quantum = false             # refuse gateways that offer no X-Wing (ML-KEM-768 + X25519) key

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .bundle import CONFIG_FIELDS, ConfigValue
from .errors import EvidenceFormatError
from .registry import BY_KEY, BY_POLICY, BY_TABLE, PLATFORMS

S = TypeVar("S")


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


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise EvidenceFormatError(f"{name} must be true or false, not {value!r}")
    return value


@dataclass(frozen=True, init=False)
class Policy:
    """What a client accepts: the platforms, GPU evidence, the gateway's bound configuration, and one typed section
    per platform of the registry (``Policy(snp=SnpPolicy(...), nitro=NitroPolicy(...))``; read with
    ``policy.get(SnpPolicy)``). A section the policy does not name is that section's fail-closed default."""

    platforms: tuple[str, ...]
    require_gpu: bool
    #: refuse a key list without a post-quantum (X-Wing) configuration; clients prefer X-Wing either way
    require_post_quantum: bool
    #: ``[config]``: required values of the gateway's bound configuration
    config: ConfigPolicy
    #: the sections given, by registry key (``"snp"``)
    sections: Mapping[str, object]

    def __init__(self, *, platforms: tuple[str, ...] = ("sev-snp", "tdx"), require_gpu: bool = False,
                 config: ConfigPolicy | None = None, sections: Mapping[str, object] | None = None,
                 require_post_quantum: bool = False, **by_key: object) -> None:
        merged = dict(sections or {})
        for key, section in by_key.items():
            platform = BY_KEY.get(key)
            if platform is None:
                raise TypeError(f"Policy() got an unexpected keyword argument {key!r}")
            if not isinstance(section, platform.policy):
                raise TypeError(f"Policy({key}=...) must be a {platform.policy.__name__}, not {type(section).__name__}")
            merged[key] = section
        object.__setattr__(self, "platforms", tuple(platforms))
        object.__setattr__(self, "require_gpu", require_gpu)
        object.__setattr__(self, "require_post_quantum", require_post_quantum)
        object.__setattr__(self, "config", config if config is not None else ConfigPolicy())
        object.__setattr__(self, "sections", merged)

    def get(self, kind: type[S]) -> S:
        """The section of type ``kind`` (``SnpPolicy``, ``NitroPolicy``, ...); its default when not configured."""
        section = self.sections.get(BY_POLICY[kind].key)
        return section if isinstance(section, kind) else kind()

    def auditing(self) -> Policy:
        """This policy accepting any measurement and any GPU version (``veil attest verify --any-measurement``)."""
        relaxed = {p.key: p.audit(self.get(p.policy)) for p in PLATFORMS if p.audit is not None}
        return Policy(platforms=self.platforms, require_gpu=self.require_gpu, config=self.config,
                      sections={**self.sections, **relaxed}, require_post_quantum=self.require_post_quantum)

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
        if extra := set(data) - {"platforms", "require_gpu", "require_post_quantum", "config", *BY_TABLE}:
            raise EvidenceFormatError(f"unknown policy keys: {sorted(extra)}")
        try:
            policy = cls(
                platforms=tuple(data.get("platforms", ("sev-snp", "tdx"))),
                require_gpu=bool(data.get("require_gpu", False)),
                require_post_quantum=_bool(data.get("require_post_quantum", False), "require_post_quantum"),
                config=ConfigPolicy.from_dict(data.get("config", {})),
                sections={p.key: p.parse_policy(data[table], base) for table, p in BY_TABLE.items() if table in data},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise EvidenceFormatError(f"invalid policy: {exc}") from None
        for p in PLATFORMS:
            if p.check_policy is not None:
                p.check_policy(policy, data)
        return policy
