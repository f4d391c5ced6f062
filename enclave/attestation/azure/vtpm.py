"""Gateway-side access to an Azure confidential VM's vTPM, through Debian's ``tpm2-tools`` (no hand-written TPM stack).

What the provider needs from the TPM, and the Azure constants (Azure's cvm-guest-attestation ``tpm_wrapper`` and the
``az-cvm-vtpm`` crate use the same handles)::

    0x01400001  NV index: the HCL report (HCLA header, SNP report or TD report, runtime JSON), refreshed by the
                paravisor when the user-data index is written
    0x01400002  NV index: 64 bytes of user data; the next HCL report carries them as the runtime JSON's user-data
    0x81000003  persistent handle: the vTPM attestation key (HCLAkPub in the runtime JSON), RSA-2048 RSASSA/SHA-256

:class:`TpmOps` is the interface the provider calls; :class:`Tpm2Tools` runs the tools (``tpm2_nvdefine``,
``tpm2_nvwrite``, ``tpm2_nvread``, ``tpm2_quote``, ``tpm2_getcap``). Tests drive the provider through ``TpmOps`` with
recorded outputs of a real Azure vTPM, and run :class:`Tpm2Tools` against ``swtpm`` (a real TPM 2.0 in software).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from ..errors import AttestationError

HCL_REPORT_NV_INDEX: Final = 0x01400001
USER_DATA_NV_INDEX: Final = 0x01400002
USER_DATA_SIZE: Final = 64
AK_HANDLE: Final = 0x81000003
#: Every SHA-256 PCR: the verifier recomputes pcrDigest over all of them, and the [azure] policy picks which matter.
QUOTE_PCRS: Final = tuple(range(24))
#: TPM2B_DATA in TPM2_Quote's qualifyingData holds at most one digest of the largest bank (SHA-384: 48 bytes here).
MAX_NONCE: Final = 48


class TpmError(AttestationError):
    """The vTPM refused or the tools failed; the message says which command and what to do."""


@dataclass(frozen=True)
class QuoteOutput:
    """What ``TPM2_Quote`` returned: the TPMS_ATTEST, the bare RSA signature, and the quoted PCR values in order."""

    message: bytes
    signature: bytes
    pcrs: dict[int, bytes]


class TpmOps(Protocol):
    """The TPM operations the Azure provider makes."""

    def nv_indices(self) -> set[int]:
        """The NV indices defined in the TPM."""
        ...

    def nv_define(self, index: int, size: int) -> None:
        """Define an owner-authorised NV index of ``size`` bytes."""
        ...

    def nv_write(self, index: int, data: bytes) -> None: ...

    def nv_read(self, index: int) -> bytes:
        """The whole NV index."""
        ...

    def quote(self, ak_handle: int, pcrs: Sequence[int], nonce: bytes) -> QuoteOutput:
        """A quote of the SHA-256 ``pcrs`` by the key at ``ak_handle`` with ``nonce`` as qualifying data."""
        ...


class Tpm2Tools:
    """:class:`TpmOps` by running ``tpm2-tools`` 5.x; ``tcti`` (e.g. ``device:/dev/tpmrm0``, ``swtpm:port=2321``) is
    passed as ``TPM2TOOLS_TCTI`` (None: the tools' default, the kernel resource manager)."""

    TOOLS: Final = ("tpm2_getcap", "tpm2_nvdefine", "tpm2_nvwrite", "tpm2_nvread", "tpm2_quote")

    def __init__(self, tcti: str | None = None, timeout: float = 30.0) -> None:
        missing = [t for t in self.TOOLS if shutil.which(t) is None]
        if missing:
            raise TpmError(f"{', '.join(missing)} not found: install tpm2-tools (Debian/Ubuntu: apt install "
                           "tpm2-tools; RHEL: dnf install tpm2-tools)")
        self.env = dict(os.environ)
        if tcti:
            self.env["TPM2TOOLS_TCTI"] = tcti
        self.timeout = timeout

    def _run(self, *argv: str, stdin: bytes | None = None) -> bytes:
        try:
            out = subprocess.run(argv, input=stdin, capture_output=True, env=self.env, timeout=self.timeout,
                                 check=False)  # the return code is turned into a TpmError below
        except (OSError, subprocess.SubprocessError) as exc:
            raise TpmError(f"{argv[0]} failed to run: {exc}") from None
        if out.returncode != 0:
            # The tools print the TPM response code and its meaning on stderr; pass on the last lines.
            why = " | ".join(out.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]) or f"exit {out.returncode}"
            raise TpmError(f"{argv[0]} failed: {why}. Is this an Azure confidential VM with its vTPM at "
                           "/dev/tpmrm0, and may this user use it (group tss, or root)?")
        return out.stdout

    def nv_indices(self) -> set[int]:
        # YAML list of "0x1400001:" style keys; one handle per line, nothing else starts with 0x.
        text = self._run("tpm2_getcap", "handles-nv-index").decode("ascii", "replace")
        return {int(line.strip().lstrip("- ").rstrip(":"), 16) for line in text.splitlines()
                if line.strip().lstrip("- ").startswith("0x")}

    def nv_define(self, index: int, size: int) -> None:
        self._run("tpm2_nvdefine", f"0x{index:08x}", "-C", "o", "-s", str(size),
                  "-a", "ownerread|ownerwrite|authread|authwrite")

    def nv_write(self, index: int, data: bytes) -> None:
        self._run("tpm2_nvwrite", f"0x{index:08x}", "-C", "o", "-i", "-", stdin=data)

    def nv_read(self, index: int) -> bytes:
        return self._run("tpm2_nvread", f"0x{index:08x}", "-C", "o")

    def quote(self, ak_handle: int, pcrs: Sequence[int], nonce: bytes) -> QuoteOutput:
        if len(nonce) > MAX_NONCE:
            raise TpmError(f"TPM quote nonce is {len(nonce)} bytes; a vTPM takes at most {MAX_NONCE}")
        with tempfile.TemporaryDirectory(prefix="veil-tpm-") as tmp:
            d = Path(tmp)
            qualify = ("-q", nonce.hex()) if nonce else ()
            self._run("tpm2_quote", "-c", f"0x{ak_handle:08x}", "-l", "sha256:" + ",".join(map(str, pcrs)),
                      *qualify, "-g", "sha256", "-m", str(d / "msg"), "-s", str(d / "sig"),
                      "-f", "plain", "-o", str(d / "pcrs"), "-F", "values")
            message, signature, values = ((d / n).read_bytes() for n in ("msg", "sig", "pcrs"))
        if len(values) != 32 * len(pcrs):
            raise TpmError(f"tpm2_quote wrote {len(values)} bytes of PCR values for {len(pcrs)} SHA-256 PCRs")
        # tpm2_quote writes the values in selection order, which is ascending index order for one bank.
        ordered = sorted(pcrs)
        return QuoteOutput(message, signature, {i: values[32 * n: 32 * n + 32] for n, i in enumerate(ordered)})


def hcl_report_present(tcti: str | None = None) -> bool:
    """Whether this machine's TPM holds an Azure HCL report (so it is an Azure confidential VM, whose TEE the guest
    cannot otherwise see). False when there is no TPM or no tpm2-tools: then nothing can be said."""
    if tcti is None and not os.path.exists("/dev/tpmrm0"):
        return False
    try:
        return HCL_REPORT_NV_INDEX in Tpm2Tools(tcti, timeout=10).nv_indices()
    except TpmError:
        return False
