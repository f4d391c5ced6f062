"""A sealing key that never leaves the TEE: the SEV-SNP firmware's derived key (MSG_KEY_REQ) through /dev/sev-guest.

The firmware derives a 32-byte key from a chip-unique root (the VCEK's secret) mixed with fields of the guest it
answers, chosen by ``guest_field_select``. Veil mixes in the launch MEASUREMENT and the guest POLICY: the same image
on the same chip gets the same key after a restart, and anything else (another image, a debug policy, another chip,
the host) cannot derive it. The TCB version is not mixed in, so a microcode update does not lose sealed state.

The ioctl, as the kernel's ``include/uapi/linux/sev-guest.h`` defines it::

    struct snp_derived_key_req { __u32 root_key_select; __u32 rsvd; __u64 guest_field_select;
                                 __u32 vmpl; __u32 guest_svn; __u64 tcb_version; };           /* 32 bytes */
    struct snp_derived_key_resp { __u8 data[64]; };                  /* the firmware's MSG_KEY_RSP */
    struct snp_guest_request_ioctl { __u8 msg_version; __u64 req_data; __u64 resp_data;
                                     union { __u64 exitinfo2; struct { __u32 fw_error; __u32 vmm_error; }; }; };
    #define SNP_GUEST_REQ_IOC_TYPE 'S'
    #define SNP_GET_DERIVED_KEY _IOWR(SNP_GUEST_REQ_IOC_TYPE, 0x1, struct snp_guest_request_ioctl)  /* 0xC0205301 */

MSG_KEY_RSP (SEV-SNP ABI): STATUS (4 bytes, 0 = success) at 0x00, reserved to 0x1F, DERIVED_KEY (32 bytes) at 0x20.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from typing import Final, Protocol

SEV_GUEST_DEVICE: Final = "/dev/sev-guest"

#: GUEST_FIELD_SELECT bits of MSG_KEY_REQ (SEV-SNP ABI)
FIELD_GUEST_POLICY: Final = 1 << 0
FIELD_IMAGE_ID: Final = 1 << 1
FIELD_FAMILY_ID: Final = 1 << 2
FIELD_MEASUREMENT: Final = 1 << 3
FIELD_GUEST_SVN: Final = 1 << 4
FIELD_TCB_VERSION: Final = 1 << 5
#: what Veil's sealing key is bound to
SEALING_FIELDS: Final = FIELD_MEASUREMENT | FIELD_GUEST_POLICY
ROOT_KEY_VCEK: Final = 0
MSG_VERSION: Final = 1


class _DerivedKeyReq(ctypes.Structure):
    _fields_ = [("root_key_select", ctypes.c_uint32), ("rsvd", ctypes.c_uint32),
                ("guest_field_select", ctypes.c_uint64), ("vmpl", ctypes.c_uint32), ("guest_svn", ctypes.c_uint32),
                ("tcb_version", ctypes.c_uint64)]


class _DerivedKeyResp(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint8 * 64)]


class _GuestRequestIoctl(ctypes.Structure):
    _fields_ = [("msg_version", ctypes.c_uint8), ("req_data", ctypes.c_uint64), ("resp_data", ctypes.c_uint64),
                ("exitinfo2", ctypes.c_uint64)]


def _iowr(kind: int, nr: int, size: int) -> int:
    """``_IOWR`` of asm-generic/ioctl.h (x86_64: where SEV-SNP guests run)."""
    return (3 << 30) | (size << 16) | (kind << 8) | nr


SNP_GET_DERIVED_KEY: Final = _iowr(ord("S"), 0x1, ctypes.sizeof(_GuestRequestIoctl))


class SnpKeyError(Exception):
    """No derived key: no SEV-SNP guest device, or the firmware refused; the message says which."""


class DerivedKeySource(Protocol):
    """Where a sealing key comes from: the SNP firmware (:class:`SevGuestDerivedKey`) or a stand-in in tests."""

    def derive(self, guest_field_select: int, vmpl: int) -> bytes:
        """32 bytes derived by the platform, bound to the selected guest fields."""
        ...


class SevGuestDerivedKey:
    """``SNP_GET_DERIVED_KEY`` on ``/dev/sev-guest``."""

    def __init__(self, path: str = SEV_GUEST_DEVICE) -> None:
        self.path = path

    def derive(self, guest_field_select: int, vmpl: int) -> bytes:
        req = _DerivedKeyReq(root_key_select=ROOT_KEY_VCEK, guest_field_select=guest_field_select, vmpl=vmpl)
        resp = _DerivedKeyResp()
        arg = _GuestRequestIoctl(msg_version=MSG_VERSION, req_data=ctypes.addressof(req),
                                 resp_data=ctypes.addressof(resp))
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise SnpKeyError(f"cannot open {self.path}: {exc.strerror or exc} (is this an SEV-SNP guest with the "
                              "sev-guest driver?)") from None
        try:
            fcntl.ioctl(fd, SNP_GET_DERIVED_KEY, arg, True)
        except OSError as exc:
            fw, vmm = arg.exitinfo2 & 0xFFFFFFFF, arg.exitinfo2 >> 32
            raise SnpKeyError(f"SNP_GET_DERIVED_KEY failed: {exc.strerror or exc} (firmware error {fw:#x}, VMM "
                              f"error {vmm:#x})") from None
        finally:
            os.close(fd)
        return parse_key_response(bytes(resp.data))


def parse_key_response(data: bytes) -> bytes:
    """The DERIVED_KEY of a MSG_KEY_RSP, if its STATUS is success."""
    if len(data) != 64:
        raise SnpKeyError(f"MSG_KEY_RSP must be 64 bytes, got {len(data)}")
    status = int.from_bytes(data[:4], "little")
    if status != 0:
        raise SnpKeyError(f"the SNP firmware refused the key request (status {status:#x}; 0x16: invalid key select)")
    key = data[32:64]
    if key == bytes(32):
        raise SnpKeyError("the SNP firmware returned an all-zero key")
    return key


def snp_sealing_key(source: DerivedKeySource | None = None, vmpl: int = 0) -> bytes:
    """A 32-byte key only this image (measurement and policy) on this chip can derive again."""
    return (source or SevGuestDerivedKey()).derive(SEALING_FIELDS, vmpl)
