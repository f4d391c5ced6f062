"""The error tree of the ``tlog`` package.

Every check that fails raises one of these; none is ever swallowed into a ``False``. Messages name what failed
(sizes, key names, indices) and never contain private keys.
"""

from __future__ import annotations

__all__ = [
    "TlogError",
    "MalformedError",
    "ProofError",
    "SignatureError",
    "NoVerifiableSignatureError",
    "UnknownKeyError",
    "CheckpointError",
    "ConsistencyError",
    "StatementError",
]


class TlogError(Exception):
    """Base of every error this package raises."""


class MalformedError(TlogError):
    """Bytes or text that break the format: a note, a key, a checkpoint, a tile or a tile path."""


class ProofError(TlogError):
    """An inclusion or consistency proof that does not verify (wrong length, wrong hashes, bad sizes)."""


class SignatureError(TlogError):
    """A signature from a known key that does not verify (the whole note is rejected)."""


class NoVerifiableSignatureError(TlogError):
    """A note with no signature from any key the caller trusts."""


class UnknownKeyError(TlogError):
    """A verifier key with an unknown algorithm, the wrong length, or a key id that does not match it."""


class CheckpointError(TlogError):
    """A checkpoint for the wrong origin, or one the caller must refuse (rolled back, too few witnesses)."""


class ConsistencyError(CheckpointError):
    """Two checkpoints that cannot both be honest: the same size with different roots, or no valid consistency proof
    between them (a forked log), or a smaller tree than one already seen (a rollback)."""


class StatementError(TlogError):
    """A release or key-configuration entry that is malformed, expired, or signed by another key."""
