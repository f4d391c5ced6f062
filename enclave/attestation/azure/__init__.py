"""Azure: confidential VMs (HCL report + vTPM quote: ``hcl``, ``tpm``, ``verify``; the provider: ``vtpm``,
``provider``) and Microsoft Azure Attestation tokens (``maa``), with their sections (``policy``: ``[azure]`` and
``[maa]``) and registry entries (``platform``). Importing the package loads only the policies."""

from .platform import AZURE, MAA
from .policy import AzurePolicy, MaaPolicy

__all__ = ["AZURE", "MAA", "AzurePolicy", "MaaPolicy"]
