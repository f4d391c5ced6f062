"""What the registry knows of one platform: its names, its policy section and its verify and provider hooks.

Each platform folder defines one :class:`Platform` (``<folder>/platform.py``); :mod:`.registry` lists them. A
platform module imports only its policy dataclass: the verifier and the provider are imported when first called,
so a client pays only for the platforms it meets.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .bundle import Bundle
from .result import Verdict

if TYPE_CHECKING:
    from .policy import Policy
    from .provider import EvidenceProvider, ProviderOptions

S = TypeVar("S")

#: ``verify(bundle, policy, now, expected_report_data) -> Verdict`` (checks, measurement, claims).
#: ``expected_report_data`` is None when the binding is not checked (``veil attest verify --no-binding``).
Verifier = Callable[[Bundle, "Policy", dt.datetime, "bytes | None"], Verdict]


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform(Generic[S]):
    """One platform. ``S`` is its policy section, a frozen dataclass whose defaults accept nothing."""

    #: the keyword of its section in :class:`Policy` (``Policy(snp=SnpPolicy(...))``)
    key: str
    #: the TOML table of its section (``[sev-snp]``)
    table: str
    #: the section's type; ``policy()`` is the fail-closed default used when the file has no such table
    policy: type[S]
    #: the section from its TOML table; ``base`` is the folder relative file names are read from
    parse_policy: Callable[[Mapping[str, Any], Path | None], S]
    #: the bundle ``platform`` values it verifies (none for GPU evidence, which rides along a CPU's)
    names: tuple[str, ...] = ()
    verify: Verifier | None = None
    #: the ``--attestation`` value of its provider, and the provider's factory
    provider_kind: str | None = None
    provider: Callable[[ProviderOptions], EvidenceProvider] | None = None
    #: the section accepting every measurement (``veil attest verify --any-measurement``)
    audit: Callable[[S], S] | None = None
    #: a check of the whole policy once loaded (``data`` is the TOML); raises EvidenceFormatError
    check_policy: Callable[[Policy, Mapping[str, Any]], None] | None = None
    #: when the bundle's evidence stops verifying by itself (unix time), read, not verified
    expiry: Callable[[Bundle], float | None] | None = None
    #: simulated evidence: accepted only when the caller allows it, never by a policy
    simulated: bool = False
