"""The gateway's settings, as one frozen dataclass built by ``veil gateway`` or by tests."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Everything ``create_app`` needs besides the engine and keys."""

    #: largest encapsulated request body accepted (413 above)
    max_request_bytes: int = 4 * 1024 * 1024
    #: accept an inner ``Date`` only within this many seconds of now; seen ``enc`` values are kept this long
    replay_window: float = 60.0
    #: require a ``Date`` inside every encapsulated request
    require_date: bool = False
    #: pad inner responses to a multiple of this many bytes (0: off)
    pad_to: int = 0
    #: seconds clients and relays may cache the key configuration
    keys_max_age: int = 3600
    #: rotate keys this often (seconds; 0: never); the old key stays accepted for ``rotation_grace`` seconds
    rotation_interval: float = 0.0
    rotation_grace: float = 300.0
    #: minimum seconds between fresh (``?nonce=``) evidence collections
    fresh_evidence_interval: float = 1.0
