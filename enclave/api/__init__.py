"""The OpenAI API served inside the TEE."""

from .auth import ApiKeyTable, hash_key
from .errors import openai_error
from .router import Api, ApiRequest

__all__ = ["Api", "ApiRequest", "ApiKeyTable", "hash_key", "openai_error"]
