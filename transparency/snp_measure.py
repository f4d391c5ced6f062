"""SEV-SNP launch digests for a release, computed from the image parts and vCPU shapes with ``sev-snp-measure``'s
Python API (``sevsnpmeasure.guest.snp_calc_launch_digest``), so a publisher never pastes measurement hex by hand.

The digest covers the OVMF image, the pages its SEV metadata names (secrets, CPUID, zeroed memory, and the kernel
hashes table when a kernel is measured), and one VMSA per vCPU, whose contents depend on the vCPU type and the VMM.
A guest shape (vCPU count x vCPU type) therefore has its own digest: a release lists one per shape it admits.

Bad inputs are ``SnpMeasureError`` with what to change, checked before the library runs: it computes a digest
from an OVMF without SEV metadata without complaint (such a firmware cannot boot an SNP guest), and its own
errors are bare ``RuntimeError``/``ValueError``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sevsnpmeasure import guest, vcpu_types
from sevsnpmeasure.ovmf import OVMF, SectionType
from sevsnpmeasure.vmm_types import VMMType

__all__ = ["SnpImage", "SnpShape", "SnpMeasureError", "VCPU_TYPES", "VMM_TYPES", "launch_digests",
           "merge_measurements", "parse_vcpus", "parse_vcpu_types", "vmm_type"]

#: the vCPU types sev-snp-measure knows (QEMU's builtin x86 CPU models), as ``--snp-vcpu-type`` takes them
VCPU_TYPES: tuple[str, ...] = tuple(vcpu_types.CPU_SIGS)
VMM_TYPES: tuple[str, ...] = tuple(VMMType.__members__)
#: sev-snp-measure's default: SNPActive only, the SEV features QEMU sets when none are asked for
DEFAULT_GUEST_FEATURES = 0x1


class SnpMeasureError(ValueError):
    """An input that cannot give a launch digest; the message says what to change."""


@dataclass(frozen=True)
class SnpImage:
    ovmf: Path
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    guest_features: int = DEFAULT_GUEST_FEATURES
    vmm: str = "QEMU"


@dataclass(frozen=True)
class SnpShape:
    vcpus: int
    vcpu_type: str | None  # None where the VMM fixes the vCPU signature (ec2, gce)


def vmm_type(name: str) -> VMMType:
    for member in VMMType:
        if member.name.lower() == name.lower():
            return member
    raise SnpMeasureError(f"unknown --snp-vmm-type {name!r} (known: {', '.join(VMM_TYPES)})")


def parse_vcpus(values: Sequence[str]) -> list[int]:
    """``["1,2", "4"]`` -> ``[1, 2, 4]`` (repeated and comma-separated options alike)."""
    out: list[int] = []
    for part in (p.strip() for v in values for p in v.split(",")):
        if not part.isdigit() or int(part) < 1:
            raise SnpMeasureError(f"--snp-vcpus {part!r}: give vCPU counts as positive integers, e.g. 1,2,4,8")
        if int(part) not in out:
            out.append(int(part))
    return out


def parse_vcpu_types(values: Sequence[str]) -> list[str]:
    out: list[str] = []
    for part in (p.strip() for v in values for p in v.split(",")):
        if part not in vcpu_types.CPU_SIGS:
            raise SnpMeasureError(f"unknown --snp-vcpu-type {part!r} (known: {', '.join(VCPU_TYPES)})")
        if part not in out:
            out.append(part)
    return out


def _file(path: Path, option: str) -> str:
    if not path.is_file():
        raise SnpMeasureError(f"{option} {path}: no such file")
    return str(path)


def _check_ovmf(image: SnpImage) -> str:
    name = _file(image.ovmf, "--snp-ovmf")
    try:
        ovmf = OVMF(name)
        ovmf.sev_es_reset_eip()
    except (RuntimeError, ValueError) as exc:
        raise SnpMeasureError(f"--snp-ovmf {image.ovmf}: not an OVMF image with SEV support ({exc}); use a "
                              "firmware built with SEV-SNP support (Debian's ovmf package: /usr/share/ovmf/OVMF.fd, "
                              "or edk2 OvmfPkg/AmdSev/AmdSevX64.dsc)") from None
    if not ovmf.metadata_items():
        raise SnpMeasureError(f"--snp-ovmf {image.ovmf}: this OVMF has no SEV metadata section, so it cannot launch "
                              "an SEV-SNP guest (e.g. Debian's 4 MiB OVMF_CODE_4M builds); use an OVMF built with "
                              "SEV-SNP support (Debian: /usr/share/ovmf/OVMF.fd; edk2: OvmfPkg/AmdSev/AmdSevX64.dsc)")
    if image.kernel is not None and not ovmf.has_metadata_section(SectionType.SNP_KERNEL_HASHES):
        raise SnpMeasureError(f"--snp-ovmf {image.ovmf}: this OVMF cannot measure a kernel (no SNP_KERNEL_HASHES "
                              "section); build it from edk2 OvmfPkg/AmdSev/AmdSevX64.dsc, or leave out --snp-kernel, "
                              "--snp-initrd and --snp-append for a guest that boots from its disk")
    return name


def launch_digests(image: SnpImage, vcpus: Sequence[int], types: Sequence[str]) -> list[tuple[SnpShape, str]]:
    """One launch digest (96 lowercase hex) per shape: every vCPU count with every vCPU type."""
    vmm = vmm_type(image.vmm)
    if (image.initrd is not None or image.append is not None) and image.kernel is None:
        raise SnpMeasureError("--snp-initrd and --snp-append are measured with a kernel: add --snp-kernel FILE")
    if not vcpus:
        raise SnpMeasureError("--snp-ovmf needs --snp-vcpus N[,N...]: the digest depends on the vCPU count")
    if vmm == VMMType.QEMU and not types:
        raise SnpMeasureError(f"--snp-vmm-type QEMU needs --snp-vcpu-type (one of {', '.join(VCPU_TYPES)}): "
                              "the vCPU signature is measured")
    if not 0 <= image.guest_features < 1 << 64:
        raise SnpMeasureError("--snp-guest-features must fit in 64 bits")
    ovmf = _check_ovmf(image)
    kernel = _file(image.kernel, "--snp-kernel") if image.kernel is not None else ""
    initrd = _file(image.initrd, "--snp-initrd") if image.initrd is not None else ""
    # ec2 and gce put a fixed value in the VMSA instead of the vCPU signature, so the type changes nothing there
    kinds: list[str | None] = [*types] or [None]
    shapes = [SnpShape(n, t) for n, t in itertools.product(vcpus, kinds)]
    out: list[tuple[SnpShape, str]] = []
    try:  # the OVMF pages' digest is the same for every shape: hash the image once, not once per shape
        ovmf_hash: str = guest.calc_snp_ovmf_hash(ovmf).hex()
    except (RuntimeError, ValueError, OSError) as exc:
        raise SnpMeasureError(f"sev-snp-measure could not compute the digest: {exc}") from None
    for shape in shapes:
        sig = vcpu_types.CPU_SIGS[shape.vcpu_type] if shape.vcpu_type is not None else 0
        try:
            digest: bytes = guest.snp_calc_launch_digest(shape.vcpus, sig, ovmf, kernel, initrd, image.append or "",
                                                         image.guest_features, ovmf_hash, vmm)
        except (RuntimeError, ValueError, OSError) as exc:
            raise SnpMeasureError(f"sev-snp-measure could not compute the digest: {exc}") from None
        out.append((shape, digest.hex()))
    return out


def merge_measurements(policy: dict[str, Any], digests: Sequence[str]) -> dict[str, Any]:
    """``policy`` with ``digests`` added to ``[sev-snp] measurements`` (kept in order, no duplicates)."""
    platforms = policy.get("platforms")
    if isinstance(platforms, list) and "sev-snp" not in platforms:
        raise SnpMeasureError(f"the policy's platforms {platforms} leave out sev-snp, so the SNP launch digests "
                              "would never be checked: add \"sev-snp\" to platforms")
    section = dict(policy.get("sev-snp", {}))
    have = [str(m).lower() for m in section.get("measurements", [])]
    section["measurements"] = have + [d for d in dict.fromkeys(digests) if d not in have]
    return {**policy, "sev-snp": section}
