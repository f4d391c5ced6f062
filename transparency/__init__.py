"""Veil's transparency layer over ``tlog``: release statements and key-configuration entries (``statements``),
the log's sequencer writing C2SP tlog-tiles as static files (``log``), the client that derives a policy from a log
(``client``), the proofs a gateway serves with its evidence (``proofs``; built by ``follow``), and the commands
``veil release`` and ``veil log``."""

from .proofs import CERT_KEY, AttachmentError, InclusionProof, LogProofs, ProvenEntries, verify_proofs

from .statements import (
    KEY_TAG,
    RELEASE_TAG,
    KeyEntry,
    Release,
    canonical_json,
    entry_kind,
    key_entry_bytes,
    open_release,
    parse_key_entry,
    release_text,
    sign_release,
)

__all__ = [
    "CERT_KEY",
    "AttachmentError",
    "InclusionProof",
    "LogProofs",
    "ProvenEntries",
    "verify_proofs",
    "KEY_TAG",
    "RELEASE_TAG",
    "KeyEntry",
    "Release",
    "canonical_json",
    "entry_kind",
    "key_entry_bytes",
    "open_release",
    "parse_key_entry",
    "release_text",
    "sign_release",
]
