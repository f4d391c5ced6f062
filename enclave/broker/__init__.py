"""The key broker: Trustee's KBS protocol (0.4.0) serving sealed secrets to gateways that pass attestation.

``protocol`` (wire shapes, binding, JWE) and ``policy`` are sans-I/O and shared with the gateway's KBS client
(``enclave.kbs_client``); ``app`` and ``cli`` are the ``veil broker`` server.
"""

from .policy import AttestationPolicy, check_evidence
from .protocol import PROTOCOL_VERSION, KbsProtocolError

__all__ = ["PROTOCOL_VERSION", "AttestationPolicy", "KbsProtocolError", "check_evidence"]
