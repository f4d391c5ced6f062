"""Gateway-side evidence from the AWS Nitro Security Module (``/dev/nsm``): one Attestation request per bundle.

Runs inside the enclave; imports nothing from ``enclave`` outside ``attestation``. The device is behind
:class:`NsmDevice` (raw CBOR in, raw CBOR out) so tests drive the provider with recorded NSM output.

Driver ABI, Linux ``include/uapi/linux/nsm.h`` (drivers/misc/nsm.c, Linux >= 6.8; the same layout and number as the
older out-of-tree driver's ``struct nsm_message`` of two ``struct iovec`` and ``NSM_IOCTL_REQUEST`` on 64-bit)::

    #define NSM_MAGIC              0x0A
    #define NSM_REQUEST_MAX_SIZE   0x1000
    #define NSM_RESPONSE_MAX_SIZE  0x3000
    struct nsm_iovec { __u64 addr; __u64 len; };
    struct nsm_raw   { struct nsm_iovec request; struct nsm_iovec response; };   /* 32 bytes */
    #define NSM_IOCTL_RAW  _IOWR(NSM_MAGIC, 0x0, struct nsm_raw)                 /* 0xC0200A00 */

The kernel copies ``request.len`` bytes in, and on return sets ``response.len`` to the bytes it wrote (truncating
silently to the buffer given). Messages are CBOR, as serde encodes aws-nitro-enclaves-nsm-api's ``Request`` and
``Response`` enums (src/api/mod.rs)::

    request:  {"Attestation": {"user_data": bstr / null, "nonce": bstr / null, "public_key": bstr / null}}
    response: {"Attestation": {"document": bstr}}   ; COSE_Sign1, see abi.py
            / {"Error": ErrorCode}                   ; "InvalidArgument", "InputTooLarge", "InternalError", ...
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hmac
import io
import os
import time
from collections.abc import Mapping
from typing import Any, Final, Protocol, Self

import cbor2
from cryptography import x509

from ..bundle import Bundle, ConfigValue, report_data
from ..errors import AttestationError, EvidenceFormatError
from .abi import parse_document
from .verify import PLATFORM

__all__ = [
    "DEFAULT_PATH",
    "NSM_IOCTL_REQUEST",
    "NSM_REQUEST_MAX_SIZE",
    "NSM_RESPONSE_MAX_SIZE",
    "LinuxNsm",
    "NitroProvider",
    "NsmDevice",
    "NsmError",
    "NsmUnavailableError",
    "attestation_request",
    "parse_attestation_response",
]

DEFAULT_PATH: Final = "/dev/nsm"
NSM_MAGIC: Final = 0x0A
NSM_REQUEST_MAX_SIZE: Final = 0x1000
NSM_RESPONSE_MAX_SIZE: Final = 0x3000

#: Why the NSM answers each ErrorCode (nsm-api src/api/mod.rs), and what the operator can do about it.
ERROR_HINTS: Final[Mapping[str, str]] = {
    "InvalidArgument": "the NSM rejected the request's fields (a bug in Veil's request encoding: please report it)",
    "InputTooLarge": "the request is larger than the NSM accepts (user_data, nonce and public_key are at most "
    "512 bytes each; Veil sends 64 bytes of user_data)",
    "InvalidOperation": "the NSM lacks the capability for this request",
    "InvalidResponse": "the NSM's answer did not match the request; retry",
    "BufferTooSmall": "the response did not fit the buffer; retry",
    "InternalError": "the NSM failed internally (the nsm-api library also reports undecodable answers this way); "
    "retry, and restart the enclave if it persists",
}


class NsmError(AttestationError):
    """The Nitro Security Module produced no usable attestation document (error answer, bad CBOR, wrong binding)."""


class NsmUnavailableError(NsmError):
    """No Nitro Security Module device on this machine (not a Nitro enclave, or no nsm driver)."""


class _NsmIovec(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _NsmRaw(ctypes.Structure):
    _fields_ = [("request", _NsmIovec), ("response", _NsmIovec)]


def _iowr(kind: int, nr: int, size: int) -> int:
    """``_IOWR`` of asm-generic/ioctl.h (x86_64 and arm64, the two Nitro enclave architectures)."""
    ioc_read_write = 3  # _IOC_READ | _IOC_WRITE
    return (ioc_read_write << 30) | (size << 16) | (kind << 8) | nr


NSM_IOCTL_REQUEST: Final = _iowr(NSM_MAGIC, 0, ctypes.sizeof(_NsmRaw))


class NsmDevice(Protocol):
    """One NSM round trip: CBOR request bytes in, CBOR response bytes out. ``/dev/nsm`` is the real one."""

    def request(self, message: bytes) -> bytes:
        """Send ``message`` and return the NSM's answer.

        Raises:
            OSError: the driver refused the request.
        """
        ...


class LinuxNsm:
    """``/dev/nsm`` through ``NSM_IOCTL_REQUEST``."""

    def __init__(self, path: str = DEFAULT_PATH) -> None:
        """Open the device (kept open; the driver serialises requests itself).

        Raises:
            OSError: ``path`` cannot be opened.
        """
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def request(self, message: bytes) -> bytes:
        """One ioctl; raises :class:`OSError` with the driver's errno (EMSGSIZE: request over 4 KiB)."""
        if self._fd is None:
            raise OSError(errno.EBADF, f"{self.path} is closed")
        if len(message) > NSM_REQUEST_MAX_SIZE:
            raise OSError(errno.EMSGSIZE, f"NSM request is {len(message)} bytes, over {NSM_REQUEST_MAX_SIZE}")
        req = (ctypes.c_char * max(1, len(message))).from_buffer_copy(message or b"\0")
        resp = ctypes.create_string_buffer(NSM_RESPONSE_MAX_SIZE)
        raw = _NsmRaw(_NsmIovec(ctypes.addressof(req), len(message)),
                      _NsmIovec(ctypes.addressof(resp), NSM_RESPONSE_MAX_SIZE))
        # mutate_flag=True: the kernel writes response.len back into ``raw``; ``req`` and ``resp`` stay referenced
        # (alive) until the call returns, since the kernel reads and writes them by address.
        fcntl.ioctl(self._fd, NSM_IOCTL_REQUEST, raw, True)
        n = raw.response.len
        if n > NSM_RESPONSE_MAX_SIZE:
            raise OSError(errno.EOVERFLOW, f"NSM driver reported a {n}-byte response for a {NSM_RESPONSE_MAX_SIZE}-"
                          "byte buffer")
        return resp.raw[:n]

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def attestation_request(user_data: bytes | None, nonce: bytes | None = None, public_key: bytes | None = None) -> bytes:
    """The CBOR of ``Request::Attestation``, fields in nsm-api's declaration order (serde keeps it)."""
    return cbor2.dumps({"Attestation": {"user_data": user_data, "nonce": nonce, "public_key": public_key}})


def parse_attestation_response(data: bytes) -> bytes:
    """The ``document`` of a ``Response::Attestation``, read strictly.

    Raises:
        NsmError: an ``Error`` answer (its ErrorCode in the message), bytes that are not one CBOR item, or any
            other shape.
    """
    try:
        stream = io.BytesIO(data)
        obj: Any = cbor2.CBORDecoder(stream).decode()
        trailing = len(data) - stream.tell()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError, EOFError) as exc:
        raise NsmError(f"the NSM answered {len(data)} bytes that are not valid CBOR ({exc}); a driver or device "
                       "fault: retry, and restart the enclave if it persists") from None
    if trailing:
        raise NsmError(f"the NSM answer has {trailing} bytes after its CBOR item; a driver or device fault")
    if not isinstance(obj, Mapping) or len(obj) != 1:
        raise NsmError(f"the NSM answered {_shape(obj)}, expected a map with one key, Attestation or Error")
    [(variant, body)] = obj.items()
    if variant == "Error":
        code = body if isinstance(body, str) else repr(body)
        hint = ERROR_HINTS.get(code, "an error code this version of Veil does not know")
        raise NsmError(f"the NSM refused the Attestation request with error {code}: {hint}")
    if variant != "Attestation":
        raise NsmError(f"the NSM answered {variant!r} to an Attestation request")
    if not isinstance(body, Mapping) or set(body) != {"document"}:
        raise NsmError(f"the NSM's Attestation answer is {_shape(body)}, expected {{\"document\": bytes}}")
    document = body["document"]
    if type(document) is not bytes or not document:
        raise NsmError(f"the NSM's attestation document is {_shape(document)}, expected a non-empty byte string")
    return document


class NitroProvider:
    """An :class:`~enclave.attestation.provider.EvidenceProvider` over the Nitro Security Module.

    Veil's binding (:func:`~enclave.attestation.bundle.report_data`, 64 bytes) goes in ``user_data``, the client's
    nonce (if any) in ``nonce``; ``public_key`` stays empty, since Nitro documents carry no key of Veil's own.
    """

    platform: str = PLATFORM

    def __init__(self, device: NsmDevice | None = None, path: str = DEFAULT_PATH) -> None:
        """Use ``device``, or open ``path``.

        Raises:
            NsmUnavailableError: ``path`` does not exist.
            NsmError: ``path`` exists but cannot be opened.
        """
        if device is None:
            if not os.path.exists(path):
                raise NsmUnavailableError(
                    f"Nitro Security Module device {path} does not exist: this is not an AWS Nitro enclave, or the "
                    "enclave kernel lacks the NSM driver (Linux >= 6.8 with CONFIG_NSM, or the out-of-tree nsm.ko of "
                    "aws-nitro-enclaves-sdk-bootstrap). For development outside an enclave use --attestation "
                    "simulated."
                )
            try:
                device = LinuxNsm(path)
            except OSError as exc:
                raise NsmError(f"cannot open the Nitro Security Module device {path}: {exc.strerror or exc}") from None
        self._device = device

    def evidence_expiry(self, bundle: Bundle) -> float:
        """When the document's leaf certificate expires. Clients check it at their own clock, and the NSM reuses
        its leaf (a recorded document had 1 h 20 min of it left), so the gateway collects again halfway there."""
        leaf = x509.load_der_x509_certificate(parse_document(bundle.report).certificate)
        return leaf.not_valid_after_utc.timestamp()

    def collect(self, key_config: bytes, nonce: bytes = b"", gpu_evidence: bytes = b"",
                config: Mapping[str, ConfigValue] | None = None) -> Bundle:
        """A bundle whose document's ``user_data`` is :func:`report_data` of ``key_config``, ``gpu_evidence`` and
        ``nonce``.

        Raises:
            NsmError: the driver or the NSM refused the request, answered malformed CBOR, or returned a document
                that does not parse or does not carry the ``user_data`` and ``nonce`` asked for.
        """
        user_data = report_data(key_config, gpu_evidence, nonce, config)
        asked_nonce = nonce or None
        request = attestation_request(user_data, asked_nonce, None)
        try:
            answer = self._device.request(request)
        except OSError as exc:
            raise NsmError(f"the NSM Attestation request failed: {exc.strerror or exc} ({_os_hint(exc)})") from exc
        document = parse_attestation_response(answer)
        try:
            doc = parse_document(document)
        except EvidenceFormatError as exc:
            raise NsmError(f"the NSM returned an attestation document that does not parse: {exc}") from exc
        if doc.user_data is None or not hmac.compare_digest(doc.user_data, user_data):
            found = "null" if doc.user_data is None else f"{len(doc.user_data)} bytes {doc.user_data[:16].hex()}..."
            raise NsmError(
                f"the NSM's attestation document carries user_data {found}, not the 64-byte key binding that was "
                f"asked for ({user_data[:16].hex()}...): the device is not answering this request; no evidence "
                "is served"
            )
        if doc.nonce != asked_nonce:
            found = "null" if doc.nonce is None else f"{len(doc.nonce)} bytes"
            raise NsmError(f"the NSM's attestation document carries nonce {found}, not the "
                           f"{'client nonce' if asked_nonce else 'null'} that was asked for")
        return Bundle(platform=self.platform, key_config=key_config, report=document, gpu_evidence=gpu_evidence,
                      nonce=nonce, issued_at=time.time(), config=dict(config or {}))


def _os_hint(exc: OSError) -> str:
    if exc.errno == errno.EMSGSIZE:
        return "the request is larger than the driver's 4 KiB"
    if exc.errno in (errno.ENOTTY, errno.EINVAL):
        return "the device does not speak the NSM ioctl: is it the Nitro Security Module?"
    return "retry, and restart the enclave if it persists"


def _shape(value: object) -> str:
    if isinstance(value, bytes):
        return f"a {len(value)}-byte string"
    if isinstance(value, Mapping):
        return f"a map with keys {sorted(map(repr, value))[:4]}"
    return f"a {type(value).__name__}"
