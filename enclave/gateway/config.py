"""The gateway's settings, as one frozen dataclass built by ``veil gateway`` or by tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..attestation.bundle import ConfigValue

#: Where the OHTTP private keys came from: made inside the TEE, released by an attested key broker, or read from an
#: operator's file (which the operator therefore knows; refused with real attestation).
KEY_ORIGINS: Final = ("generated", "broker", "file")
#: What the gateway itself checked of its GPUs (``CONFIG_FIELDS["gpu_cc_checked"]``; None: no GPU evidence).
GPU_CC_CHECKS: Final = ("nvml", "command")
#: What the gateway itself checked of its NVSwitches (``CONFIG_FIELDS["switch_tnvl_checked"]``; None: no switches).
SWITCH_CHECKS: Final = ("nscq",)


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    """Everything ``create_app`` needs besides the engine and keys."""

    #: largest encapsulated request body accepted (413 above)
    max_request_bytes: int = 4 * 1024 * 1024
    #: seconds an encapsulated request body may take to arrive in full (408 beyond); above the relays' own bound
    body_timeout: float = 90.0
    #: seconds a relay may leave a streamed answer's bytes unread before it is dropped and the engine's stream
    #: closed (0: never); without it a relay that stops reading holds a stream, and its generation, for good
    write_timeout: float = 60.0
    #: accept an inner ``Date`` only within this many seconds of now; seen ``enc`` values are kept this long
    replay_window: float = 60.0
    #: require a ``Date`` inside every encapsulated request (without one, a request could be replayed once its
    #: ``enc`` has left the replay cache); off only for tests (``--allow-missing-date``)
    require_date: bool = True
    #: pad every stream event (SSE comment lines) to a multiple of this many bytes, and whole responses to
    #: ``ohttp.padded_size(n, pad_to)`` (0: off); the default holds a chat token event of vLLM or the echo engine
    pad_to: int = 256
    #: join the SSE events that arrive within this many milliseconds of the first one into one sealed chunk
    #: (0: one chunk per event); the first token waits at most this long
    coalesce_ms: float = 0.0
    #: seconds clients and relays may cache the key configuration
    keys_max_age: int = 3600
    #: rotate keys this often (seconds; 0: never); the old key stays accepted for ``rotation_grace`` seconds
    rotation_interval: float = 0.0
    rotation_grace: float = 300.0
    #: minimum seconds between fresh (``?nonce=``) evidence collections
    fresh_evidence_interval: float = 1.0
    #: where the OHTTP keys came from (:data:`KEY_ORIGINS`); bound into the evidence
    key_origin: str = "generated"
    #: the model id clients use (None: whatever a loopback upstream serves); bound into the evidence
    model: str | None = None
    #: SHA-256 (hex) of the encrypted model's ``veil-model.json`` the gateway decrypted, and where its key came
    #: from ("file" or "broker"); None without an encrypted model
    model_manifest_sha256: str | None = None
    model_key_origin: str | None = None
    #: how the engine is launched (vLLM's Python, model directory, dtype, extra arguments; or the upstream URL;
    #: None for echo): chosen by whoever starts the gateway, so bound into the evidence
    engine_launch: str | None = None
    #: what the gateway checked of its GPUs before collecting their evidence (:data:`GPU_CC_CHECKS`; None: no GPU
    #: evidence) and how many GPUs NVML saw (None unless "nvml"); bound into the evidence
    gpu_cc_checked: str | None = None
    gpu_count: int | None = None
    #: what the gateway checked of its NVSwitches (:data:`SWITCH_CHECKS`: LS10, TNVL on and locked, through NSCQ;
    #: None: no switch evidence); bound into the evidence
    switch_tnvl_checked: str | None = None
    #: how many NVSwitches NSCQ saw at start (None unless ``switch_tnvl_checked``); bound into the evidence
    switch_count: int | None = None
    #: the key broker's URL and the SHA-256 of the policy its evidence had to pass (None without --key-broker)
    key_broker: str | None = None
    key_broker_policy_sha256: str | None = None
    #: a transparency log's tiles URL: the gateway attaches the inclusion proofs of its key entry and release to
    #: its evidence (``certs["veil_log"]``), refreshed every ``transparency_refresh`` seconds. Not bound: it only
    #: fetches material clients verify against their own log key, so whoever sets it can at worst leave it out
    transparency_log: str | None = None
    transparency_refresh: float = 60.0
    #: the log's verifier key (``name+hexid+base64``): the follower believes a checkpoint (its size: how much it
    #: fetches) only once this key's signature on it verifies; None believes the unsigned size
    transparency_log_key: str | None = None
    #: publishers' verifier keys: when the gateway's key entry names no release, only their releases are attached
    #: (in a log shared by publishers, others' newer releases would push this gateway's out); empty: anyone's
    transparency_publishers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.transparency_refresh > 0:
            raise ValueError("transparency_refresh must be a positive number of seconds")
        keys = [("transparency_publishers", k) for k in self.transparency_publishers]
        if self.transparency_log_key is not None:
            keys.insert(0, ("transparency_log_key", self.transparency_log_key))
        if keys:
            from tlog import TlogError, parse_verifier_key

            for what, key in keys:
                try:
                    parse_verifier_key(key)
                except TlogError as exc:
                    raise ValueError(f"{what}: not a verifier key: {exc}") from None
        if self.key_origin not in KEY_ORIGINS:
            raise ValueError(f"key_origin must be one of {', '.join(KEY_ORIGINS)}")
        if self.gpu_cc_checked is not None and self.gpu_cc_checked not in GPU_CC_CHECKS:
            raise ValueError(f"gpu_cc_checked must be None or one of {', '.join(GPU_CC_CHECKS)}")
        if self.gpu_count is not None and (self.gpu_cc_checked != "nvml" or self.gpu_count < 1):
            raise ValueError("gpu_count is the number of GPUs NVML saw: a positive count with gpu_cc_checked nvml")
        if self.switch_tnvl_checked is not None and self.switch_tnvl_checked not in SWITCH_CHECKS:
            raise ValueError(f"switch_tnvl_checked must be None or one of {', '.join(SWITCH_CHECKS)}")
        if (self.switch_count is not None) != (self.switch_tnvl_checked is not None) or (
                self.switch_count is not None and self.switch_count < 1):
            raise ValueError("switch_count is the number of NVSwitches NSCQ saw: a positive count exactly when "
                             "switch_tnvl_checked is set")

    def attested(self, *, engine: str, api_keys_required: bool, cache_salt: str) -> dict[str, ConfigValue]:
        """The security-relevant configuration the evidence binds (bundle ``config``; see
        :data:`enclave.attestation.bundle.CONFIG_FIELDS`). Built from these fields, so whatever a deployment
        configures (padding, replay window, ...) is what clients see and their policies check."""
        return {
            "engine": engine,
            "model": self.model,
            "model_manifest_sha256": self.model_manifest_sha256,
            "model_key_origin": self.model_key_origin,
            "key_origin": self.key_origin,
            "pad_to": self.pad_to,
            "replay_window_ms": round(self.replay_window * 1000),
            "require_date": self.require_date,
            "api_keys_required": api_keys_required,
            "cache_salt": cache_salt,
            "coalesce_ms": round(self.coalesce_ms),
            "engine_launch": self.engine_launch,
            "gpu_cc_checked": self.gpu_cc_checked,
            "gpu_count": self.gpu_count,
            "switch_tnvl_checked": self.switch_tnvl_checked,
            "switch_count": self.switch_count,
            "key_broker": self.key_broker,
            "key_broker_policy_sha256": self.key_broker_policy_sha256,
        }
