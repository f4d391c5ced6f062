"""NVSwitch evidence through NSCQ (``libnvidia-nscq``), the library NVIDIA's own switch verifiers collect it with.

The binding is NVIDIA's: ``NSCQHandler`` of ``nv-attestation-sdk`` (``nv_attestation_sdk.verifiers.nv_switch_verifier
.nscq``: pynscq, ctypes over ``libnvidia-nscq.so``; the same module ships in ``nv-ppcie-verifier``). Only that module
is imported, and it needs nothing but ctypes, so it is installed without the SDK's pinned dependencies (its
``cryptography==43`` conflicts with Veil's)::

    pip install --no-deps nv-attestation-sdk      # and NVIDIA's libnvidia-nscq package for the driver branch

For each switch NSCQ lists: check that it is in protected-PCIe mode (``/config/pcie_mode``: TNVL on and locked,
the two bits nvtrust's PPCIe verifier requires), then ask for its SPDM attestation report over the 32-byte nonce
(``/config/attestation_report``) and its certificate chain (``/config/certificate``, PEM text). The output is a
list of ``(report bytes, PEM chain)`` for :func:`.abi.encode_gpu_evidence`'s ``switches``.

LS10 reports do not say whether TNVL is locked, so a client cannot check it: refusing to produce evidence when NSCQ
says it is off is the gateway's own safety net, as the NVML CC check is for the GPUs.

NOT RUN ON HARDWARE: this was written against the SDK's ``NSCQHandler`` (2.7.3) and tested through a stand-in
handler answering with recorded LS10 reports (``tests/attestation/test_nscq_evidence.py``); no NVSwitch system was
available.
"""

from __future__ import annotations

import ctypes.util
from typing import Any, Final

from ..errors import EvidenceFormatError
from .abi import parse_switch_report

NONCE_SIZE: Final = 32
#: ``nscq_rcs.NSCQ_RC_SUCCESS``; negative codes are errors, positive ones warnings
NSCQ_RC_SUCCESS: Final = 0
#: ``/config/pcie_mode`` bits (nvtrust's ``NSCQHandler.TNVL_BIT_POSITION`` / ``LOCK_BIT_POSITION``)
TNVL_BIT: Final = 1 << 0
LOCK_BIT: Final = 1 << 1
#: ``nscq_arch_types.NSCQ_ARCH_LS10``: the only switch whose reports Veil parses
NSCQ_ARCH_LS10: Final = 2
MAX_SWITCHES: Final = 16
SDK_MODULE: Final = "nv_attestation_sdk.verifiers.nv_switch_verifier.nscq"


class NscqEvidenceError(Exception):
    """NSCQ produced no switch evidence (no library, no switch, TNVL off or unlocked, an NSCQ error)."""


def _handler(module: Any | None) -> Any:
    """A new ``NSCQHandler`` of ``module`` (default: NVIDIA's, imported here)."""
    if module is None:
        # pynscq loads the library at import with CDLL(find_library(...)); without it, CDLL(None) "succeeds" and
        # every call fails later with an undefined symbol. Say what is missing instead.
        if ctypes.util.find_library("nvidia-nscq") is None:
            raise NscqEvidenceError("libnvidia-nscq is not installed: install NVIDIA's libnvidia-nscq package for "
                                    "this driver branch (NVSwitch systems)")
        try:
            import importlib

            module = importlib.import_module(SDK_MODULE)
        except ImportError as exc:
            raise NscqEvidenceError(f"NVIDIA's NSCQ binding is not installed ({exc}): pip install --no-deps "
                                    "nv-attestation-sdk") from None
    try:
        return module.NSCQHandler()
    except Exception as exc:  # NSCQError, or AttributeError for a library without the symbols
        raise NscqEvidenceError(f"cannot open an NSCQ session: {type(exc).__name__}: {exc}") from None


def _forget(handler: Any, table: str, uuid: str) -> None:
    """Drop ``uuid``'s earlier answer: NVIDIA's handler keeps answers in class-level dictionaries filled by NSCQ's
    callbacks, so a call whose callback never ran would otherwise return the previous collection's value."""
    answers = getattr(handler, table, None)
    if isinstance(answers, dict):
        answers.pop(uuid, None)


def _ok(what: str, answer: Any) -> Any:
    """The value of an ``NSCQHandler`` answer ``(value, rc)``; refuses a failed or missing one."""
    if not isinstance(answer, tuple) or len(answer) != 2:
        raise NscqEvidenceError(f"{what}: unexpected answer from NSCQ")
    value, rc = answer
    if not isinstance(rc, int) or rc < NSCQ_RC_SUCCESS:
        raise NscqEvidenceError(f"{what}: NSCQ return code {rc}")
    if value is None or value == "NOT PRESENT":  # the handler's placeholder when no callback answered
        raise NscqEvidenceError(f"{what}: NSCQ gave no value")
    return value


def switch_uuids(nscq: Any | None = None) -> list[str]:
    """The switches NSCQ sees, after the checks :func:`collect_switch_evidence` makes before every collection: LS10,
    TNVL on and locked. At least one.

    Raises:
        NscqEvidenceError: no library or binding, no switch, not LS10, TNVL off or not locked, an NSCQ error.
    """
    return _checked(_handler(nscq))


def _checked(handler: Any) -> list[str]:
    try:
        listed = handler.get_all_switch_uuid()
        # No switch: no callback ran, so the return code is None (or an earlier call's): say what it means.
        uuids = [] if isinstance(listed, tuple) and listed[:1] == ([],) else list(_ok("switch list", listed))
        if not uuids:
            raise NscqEvidenceError("NSCQ sees no NVSwitch")
        if len(uuids) > MAX_SWITCHES:
            raise NscqEvidenceError(f"NSCQ sees {len(uuids)} NVSwitches (limit {MAX_SWITCHES})")
        arch = _ok("switch architecture", handler.get_switch_architecture())
        if arch != NSCQ_ARCH_LS10:
            raise NscqEvidenceError(f"NVSwitch architecture {arch} is not LS10 ({NSCQ_ARCH_LS10})")
        for uuid in uuids:
            _forget(handler, "tnvl_status", uuid)
            mode = _ok(f"switch {uuid} pcie mode", handler.get_switch_tnvl_status(uuid))
            if not isinstance(mode, int) or not mode & TNVL_BIT:
                raise NscqEvidenceError(f"NVSwitch {uuid} is not in protected-PCIe (TNVL) mode (pcie_mode {mode}); "
                                        "enable it with NVIDIA's nvswitch tools on the host")
            if not mode & LOCK_BIT:
                raise NscqEvidenceError(f"NVSwitch {uuid} is in TNVL mode but not locked (pcie_mode {mode}): "
                                        "its configuration can still change; refusing to attest it")
        return uuids
    except NscqEvidenceError:
        raise
    except Exception as exc:  # pynscq raises NSCQError (an Exception) from any failing call
        raise NscqEvidenceError(f"NSCQ failed: {type(exc).__name__}: {exc}") from None


def collect_switch_evidence(nonce: bytes, nscq: Any | None = None) -> list[tuple[bytes, str]]:
    """Every NVSwitch's ``(SPDM attestation report over nonce, PEM certificate chain)``, in NSCQ's order.

    The chain is passed on as NSCQ gives it (root included): the client pins the root and checks every link.

    Raises:
        NscqEvidenceError: as :func:`switch_uuids`, a wrong nonce size, an empty report or chain, or a report that
            does not parse as LS10 or answers another nonce (a stale answer).
    """
    if len(nonce) != NONCE_SIZE:
        raise NscqEvidenceError(f"the switch nonce must be {NONCE_SIZE} bytes, not {len(nonce)}")
    handler = _handler(nscq)
    uuids = _checked(handler)
    out: list[tuple[bytes, str]] = []
    try:
        for uuid in uuids:
            _forget(handler, "attestation_report", uuid)
            _forget(handler, "certificate_chain", uuid)
            report = _ok(f"switch {uuid} attestation report", handler.get_switch_attestation_report(uuid, nonce))
            chain = _ok(f"switch {uuid} certificate chain", handler.get_switch_attestation_certificate_chain(uuid))
            if not isinstance(report, bytes) or not report or not isinstance(chain, bytes):
                raise NscqEvidenceError(f"switch {uuid}: NSCQ returned an empty report or certificate chain")
            try:
                answered = parse_switch_report(report).nonce
            except EvidenceFormatError as exc:
                raise NscqEvidenceError(f"switch {uuid}: the report is not an LS10 attestation report: {exc}") from None
            if answered != nonce:
                raise NscqEvidenceError(f"switch {uuid}: the report answers nonce {answered.hex()[:16]}…, not the one "
                                        "asked for")
            text = chain.rstrip(b"\x00")
            if b"BEGIN CERTIFICATE" not in text or not text.isascii():
                raise NscqEvidenceError(f"switch {uuid}: the certificate chain is not PEM text")
            out.append((report, text.decode("ascii")))
    except NscqEvidenceError:
        raise
    except Exception as exc:
        raise NscqEvidenceError(f"NSCQ failed to produce switch evidence: {type(exc).__name__}: {exc}") from None
    return out
