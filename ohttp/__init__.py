"""Oblivious HTTP for Veil: key configurations, Binary HTTP, RFC 9458 encapsulation and chunked OHTTP.

Sans-I/O: bytes in, bytes out. Nothing here opens a socket, imports asyncio or aiohttp, or knows about LLMs.

The public API is each submodule's ``__all__``, re-exported here as it stands (h11 style): a name is made public
by listing it in the module that defines it. ``tests/ohttp/test_public_api.py`` pins the resulting list.
"""

from . import _hpke, bhttp, chunked, encapsulation, errors, keys, stream
from ._hpke import *  # noqa: F403
# bhttp's names come from its private modules directly: mypy does not follow a star import through a package whose
# __all__ is itself assembled from star imports (ohttp.bhttp re-exports the same three lists).
from .bhttp._decode import *  # noqa: F403
from .bhttp._encode import *  # noqa: F403
from .bhttp._messages import *  # noqa: F403
from .chunked import *  # noqa: F403
from .encapsulation import *  # noqa: F403
from .errors import *  # noqa: F403
from .keys import *  # noqa: F403
from .stream import *  # noqa: F403

__all__: list[str] = []
__all__ += _hpke.__all__  # algorithms
__all__ += keys.__all__  # key configurations, application/ohttp-keys
__all__ += bhttp.__all__  # Binary HTTP
__all__ += encapsulation.__all__  # RFC 9458
__all__ += chunked.__all__  # chunked OHTTP
__all__ += stream.__all__  # chunked OHTTP to BHTTP events
__all__ += errors.__all__
