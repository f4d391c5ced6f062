"""hop: a lean HTTP/1.1 client for the hops between Veil's own processes, where every streamed token passes.

Not a general HTTP client: no redirects, cookies, proxies or decompression (a hop wants none of them). See
:mod:`hop.client` for why it exists beside aiohttp and what it checks, and :mod:`hop.pipe` for passing a piped
response on to a server's client.
"""

from . import client, pipe
from .client import *  # noqa: F403
from .pipe import *  # noqa: F403

__all__ = [*client.__all__, *pipe.__all__]
