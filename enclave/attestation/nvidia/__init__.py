"""NVIDIA Hopper (H100/H200) confidential-computing GPU evidence: SPDM report parser and the GPU evidence format
carried in Veil bundles (``abi``), the ``[nvidia]`` section (``policy``), the offline verifier (``verify``, loaded
when first used), NVML collection (``nvml``), the registry entry (``platform``)."""

from .abi import (
    GpuReport,
    MeasurementBlock,
    OpaqueField,
    OpaqueFieldId,
    decode_gpu_evidence,
    decode_nvidia_evidence,
    encode_gpu_evidence,
    load_nvtrust_evidence_list,
    parse_gpu_report,
)
from .platform import PLATFORM
from .policy import NvidiaPolicy

__all__ = [
    "PLATFORM",
    "GpuReport",
    "MeasurementBlock",
    "NvidiaPolicy",
    "OpaqueField",
    "OpaqueFieldId",
    "decode_gpu_evidence",
    "decode_nvidia_evidence",
    "encode_gpu_evidence",
    "load_nvtrust_evidence_list",
    "parse_gpu_report",
]
