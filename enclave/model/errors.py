"""Errors of encrypted model handling; every message says what is wrong and where."""

from __future__ import annotations


class ModelError(Exception):
    """An encrypted model cannot be made or loaded; the message says why."""


class ModelKeyError(ModelError):
    """The key is missing, malformed, or not the model's key."""


class ModelIntegrityError(ModelError):
    """Authentication failed: the encrypted model was tampered with, truncated, reordered or mixed up."""
