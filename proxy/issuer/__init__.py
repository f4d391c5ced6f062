"""``veil issuer``: a Privacy Pass issuer (RFC 9578 token type 0x0002) with key rotation and a pluggable attester."""

from .app import create_app
from .attester import ApiKeyAttester, Attestation, AttestationRefused, Attester
from .config import IssuerConfig

__all__ = ["create_app", "IssuerConfig", "ApiKeyAttester", "Attestation", "AttestationRefused", "Attester"]
