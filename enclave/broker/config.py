"""The broker's resource table (TOML): which secrets exist, where they are sealed, and which policy releases each.

::

    [resources."default/ohttp/keyset"]
    path = "keyset.sealed"              # sealed at rest (veil broker --seal); relative to this file
    policy = "gateway-policy.toml"      # enclave.broker.policy format; required: nothing is released without one
    generate = "ohttp-keyset"           # optional: if `path` does not exist, make a fresh key set inside the
                                        # broker's TEE and seal it there (it never exists in plaintext outside)
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..attestation.errors import EvidenceFormatError
from ..keyset import new_key_set
from .policy import AttestationPolicy
from .protocol import KbsProtocolError, parse_resource_path
from .sealing import SealError, seal, unseal

log = logging.getLogger("veil.broker")

GENERATORS: Final = ("ohttp-keyset",)
_MEMBERS: Final = {"path", "policy", "generate"}


class BrokerConfigError(Exception):
    """The resource table cannot be used; the message says why."""


@dataclass(frozen=True)
class Resource:
    """One releasable secret: its path, its sealed file and the policy a requester must pass."""

    path: str
    sealed_file: Path
    policy: AttestationPolicy
    generate: str | None = None

    def read(self, kek: bytes) -> bytes:
        """Unseal the secret (read from disk on each release, so a re-sealed file takes effect at once)."""
        return unseal(kek, self.path, self.sealed_file.read_bytes())


def _opens(res: Resource, kek: bytes) -> bool:
    try:
        res.read(kek)
    except (OSError, SealError):
        return False
    return True


def load_resources(config_path: str | Path, kek: bytes, *, ephemeral: bool = False) -> dict[str, Resource]:
    """Read the resource table, generate missing generated secrets, and check every secret unseals under ``kek``.

    ``ephemeral``: ``kek`` is random per process (no sealing key on this platform), so a generated secret sealed by
    an earlier process is made again, and a secret sealed elsewhere is an error that says why.

    Raises:
        BrokerConfigError: unreadable table, a bad path, member or policy, or a secret that does not unseal.
    """
    base = Path(config_path).resolve().parent
    try:
        data = tomllib.loads(Path(config_path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise BrokerConfigError(f"cannot read resources file {config_path}: {exc}") from None
    if extra := set(data) - {"resources"}:
        raise BrokerConfigError(f"unknown tables in {config_path}: {sorted(extra)} (only [resources.\"R/T/T\"])")
    table = data.get("resources", {})
    if not isinstance(table, dict) or not table:
        raise BrokerConfigError(f"{config_path} defines no [resources.\"repository/type/tag\"]")
    out: dict[str, Resource] = {}
    for name, spec in table.items():
        try:
            parts = name.split("/")
            if len(parts) != 3:
                raise KbsProtocolError(f"{name!r} is not repository/type/tag")
            path = parse_resource_path(*parts)
        except KbsProtocolError as exc:
            raise BrokerConfigError(f"resource {name!r}: {exc.detail}") from None
        if not isinstance(spec, dict):
            raise BrokerConfigError(f"resource {name!r} must be a table")
        if extra := set(spec) - _MEMBERS:
            raise BrokerConfigError(f"resource {name!r}: unknown members {sorted(extra)}")
        if "path" not in spec or "policy" not in spec:
            raise BrokerConfigError(f"resource {name!r} needs 'path' (sealed file) and 'policy' (attestation policy)")
        generate = spec.get("generate")
        if generate is not None and generate not in GENERATORS:
            raise BrokerConfigError(f"resource {name!r}: generate must be one of {', '.join(GENERATORS)}")
        try:
            policy = AttestationPolicy.load(base / spec["policy"])
        except EvidenceFormatError as exc:
            raise BrokerConfigError(f"resource {name!r}: {exc}") from None
        if not policy.has_measurements():
            log.warning("resource %s: policy %s lists no measurement; nothing will be released", path, policy.source)
        res = Resource(path=path, sealed_file=base / spec["path"], policy=policy, generate=generate)
        stale = ephemeral and res.sealed_file.exists() and generate is not None and not _opens(res, kek)
        if stale:
            log.warning("resource %s: no sealing key survives a restart on this platform: the key set sealed by an "
                        "earlier broker is replaced by a new one", path)
        if (stale or not res.sealed_file.exists()) and generate == "ohttp-keyset":
            res.sealed_file.write_bytes(seal(kek, path, new_key_set()))
            log.info("resource %s: generated a new OHTTP key set, sealed to %s", path, res.sealed_file)
        try:
            res.read(kek)
        except OSError as exc:
            raise BrokerConfigError(f"resource {name!r}: cannot read {res.sealed_file}: {exc}") from None
        except SealError as exc:
            hint = (" (this broker's sealing key is made per process: only secrets it generates itself can be held; "
                    "secrets sealed with an operator KEK are accepted only with --attestation simulated)"
                    if ephemeral else "")
            raise BrokerConfigError(f"resource {name!r}: {res.sealed_file}: {exc}{hint}") from None
        out[path] = res
    return out
