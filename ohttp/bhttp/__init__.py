"""Binary HTTP messages (RFC 9292): data model, encoders for both framings, and an incremental decoder.

``_messages`` holds the messages and events, ``_encode`` the encoders, ``_decode`` the decoders; each module's
``__all__`` is re-exported here (h11 style), and from here by ``ohttp``. The framing (known- or
indeterminate-length) is an argument of the encoders, never part of a message.
"""

from . import _decode, _encode, _messages
from ._decode import *  # noqa: F403
from ._encode import *  # noqa: F403
from ._messages import *  # noqa: F403
from ._messages import Event as Event, Field as Field

__all__ = _messages.__all__ + _encode.__all__ + _decode.__all__
