"""The root of xb's exceptions: everything xb raises on purpose derives from ``XbError``.

Each role keeps its own errors beside the code that raises them, and each derives from
``XbError`` (directly or through a role's base), so a caller can catch all of xb's errors,
one role's, or one kind::

    XbError
    ├── ProtocolError       xb.core.protocol: a frame that does not follow the protocol
    ├── PathRefused         xb.core.paths: a path outside the allowed model folders
    ├── ModelFileError      xb.core.modelfile: a model file that cannot be read
    ├── RegistryError       xb.core.registry: a family that cannot be registered
    ├── KeysError           xb.core.keys: an API keys file that cannot be read
    └── (each role's own)   broker, worker, api and client errors; see their modules

The client's errors for HTTP answers (``xb.client.errors``) follow the openai package's
shape: connection errors apart from status errors, one class per status.
"""

from __future__ import annotations


class XbError(Exception):
    """Something xb refused or could not do; the message says what and how to fix it."""
