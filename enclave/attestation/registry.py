"""The platform registry: one line per platform folder. Policy sections, verification and the provider factory
read these tables (as h11's connection reads READERS/WRITERS) instead of branching on names.

Adding a platform: a folder with its policy section, parser/verifier and ``platform.py`` (a :class:`Platform`),
then one line in :data:`PLATFORMS`.
"""

from __future__ import annotations

from typing import Any, Final

from .azure.platform import AZURE, MAA
from .nitro.platform import PLATFORM as NITRO
from .nvidia.platform import PLATFORM as NVIDIA
from .platform import Platform
from .sgx.platform import PLATFORM as SGX
from .simulated.platform import PLATFORM as SIMULATED
from .snp.platform import PLATFORM as SNP
from .tdx.platform import PLATFORM as TDX

#: Every platform, in the order of ``--attestation``'s choices and of the policy's tables.
PLATFORMS: Final[tuple[Platform[Any], ...]] = (SIMULATED, SNP, TDX, SGX, NVIDIA, AZURE, MAA, NITRO)

#: By :class:`Policy` keyword (``snp``), by TOML table (``sev-snp``), by section type (``SnpPolicy``).
BY_KEY: Final = {p.key: p for p in PLATFORMS}
BY_TABLE: Final = {p.table: p for p in PLATFORMS if p.table}
BY_POLICY: Final[dict[type, Platform[Any]]] = {p.policy: p for p in PLATFORMS}
#: The verifier of each bundle ``platform`` value.
VERIFIERS: Final = {name: p for p in PLATFORMS for name in p.names}
#: The provider of each ``--attestation`` value ("auto" is detection: :func:`provider.make_provider`).
PROVIDERS: Final = {p.provider_kind: p for p in PLATFORMS if p.provider_kind}
#: GPU evidence that rides along any CPU platform's bundle.
GPU: Final = NVIDIA
