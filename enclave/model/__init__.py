"""Encrypted models: the owner encrypts a model directory, a gateway verifies and decrypts it into TEE memory.

``veil model encrypt|decrypt|keygen`` is the owner's tool; ``veil gateway --encrypted-model`` loads one. The format
(AES-256-GCM in independently authenticated chunks under a sealed manifest) is described in :mod:`.container`.
"""

from .container import (
    DEFAULT_CHUNK_SIZE,
    MANIFEST_NAME,
    DecryptStats,
    FileEntry,
    Manifest,
    decrypt_model,
    encrypt_model,
    read_manifest,
)
from .errors import ModelError, ModelIntegrityError, ModelKeyError
from .model_key import KeySource, ModelKey, key_file_source, load_key_file, write_key_file
from .loader import DecryptedModel, decrypt_to_memory, load_for_gateway
from .tmpfs import filesystem_of, is_memory_backed

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MANIFEST_NAME",
    "DecryptStats",
    "DecryptedModel",
    "FileEntry",
    "KeySource",
    "Manifest",
    "ModelError",
    "ModelIntegrityError",
    "ModelKey",
    "ModelKeyError",
    "decrypt_model",
    "decrypt_to_memory",
    "encrypt_model",
    "filesystem_of",
    "is_memory_backed",
    "key_file_source",
    "load_for_gateway",
    "load_key_file",
    "read_manifest",
    "write_key_file",
]
