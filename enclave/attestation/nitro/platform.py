"""AWS Nitro Enclaves in the registry: bundles ``aws-nitro`` (an NSM attestation document), the ``[nitro]``
section, the ``/dev/nsm`` provider (``--attestation nitro``) and the document's expiry."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import TYPE_CHECKING

from ..bundle import Bundle
from ..errors import AttestationError, ProviderError
from ..platform import Platform
from ..result import Verdict
from .policy import NitroPolicy

if TYPE_CHECKING:
    from ..policy import Policy
    from ..provider import EvidenceProvider, ProviderOptions


def _verify(bundle: Bundle, policy: Policy, now: dt.datetime, expected_rd: bytes | None) -> Verdict:
    from .verify import verify_nitro

    # Nitro documents carry no key of their own: Veil's binding goes in user_data (64 bytes). The client checks
    # certificates at its own clock, not the document's timestamp: the evidence must be valid now.
    return verify_nitro(bundle.report, policy.get(NitroPolicy), now=now, expected_user_data=expected_rd)


def _provider(options: ProviderOptions) -> EvidenceProvider:
    from .nsm import NitroProvider

    try:
        return NitroProvider(path=options.nsm_device)
    except AttestationError as exc:
        raise ProviderError(f"--attestation nitro: {exc}") from None


def _expiry(bundle: Bundle) -> float | None:
    """The leaf certificate's ``not_after``: the NSM reuses the leaf, so the document stops verifying then."""
    from cryptography import x509

    from .abi import parse_document

    try:
        leaf = x509.load_der_x509_certificate(parse_document(bundle.report).certificate)
    except (AttestationError, ValueError):
        return None
    return leaf.not_valid_after_utc.timestamp()


PLATFORM = Platform(
    key="nitro", table="nitro", policy=NitroPolicy, parse_policy=lambda data, base: NitroPolicy.from_dict(data),
    names=("aws-nitro",), verify=_verify, provider_kind="nitro", provider=_provider,
    audit=lambda section: replace(section, any_measurement=True), expiry=_expiry,
)
