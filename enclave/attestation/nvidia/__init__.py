"""NVIDIA Hopper (H100/H200) confidential-computing GPU evidence: SPDM report parser, offline verifier, and the GPU
evidence format carried in Veil bundles."""

from .abi import (
    GpuReport,
    MeasurementBlock,
    OpaqueField,
    OpaqueFieldId,
    decode_gpu_evidence,
    encode_gpu_evidence,
    load_nvtrust_evidence_list,
    parse_gpu_report,
)
from .verify import NVIDIA_DEVICE_ROOT_SHA256, verify_nvidia

__all__ = [
    "NVIDIA_DEVICE_ROOT_SHA256",
    "GpuReport",
    "MeasurementBlock",
    "OpaqueField",
    "OpaqueFieldId",
    "decode_gpu_evidence",
    "encode_gpu_evidence",
    "load_nvtrust_evidence_list",
    "parse_gpu_report",
    "verify_nvidia",
]
