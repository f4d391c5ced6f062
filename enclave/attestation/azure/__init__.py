"""Azure: confidential VMs (HCL report + vTPM quote: ``hcl``, ``tpm``, ``verify``) and Microsoft Azure Attestation
tokens (``maa``), with their policies (``policy``: TOML tables ``[azure]`` and ``[maa]``)."""

from .hcl import HclReport, parse_hcl_report
from .maa import jwk_thumbprint, verify_maa_token
from .policy import AzurePolicy, MaaPolicy
from .tpm import TpmQuote
from .tpm import parse_quote as parse_tpm_quote
from .verify import (
    PLATFORM_SNP,
    PLATFORM_TDX,
    AzureCvmEvidence,
    load_tpm_quote,
    load_trustee_evidence,
    verify_azure_cvm,
)

__all__ = [
    "PLATFORM_SNP",
    "PLATFORM_TDX",
    "AzureCvmEvidence",
    "AzurePolicy",
    "HclReport",
    "MaaPolicy",
    "TpmQuote",
    "jwk_thumbprint",
    "load_tpm_quote",
    "load_trustee_evidence",
    "parse_hcl_report",
    "parse_tpm_quote",
    "verify_azure_cvm",
    "verify_maa_token",
]
