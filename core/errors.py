"""The root of xb's exceptions: everything xb raises on purpose derives from ``XbError``.

Each role keeps its own errors beside the code that raises them, and each derives from
``XbError`` (directly or through a role's base), so a caller can catch all of xb's errors,
one role's, or one kind::

    XbError
    ├── ProtocolError       xb.core.protocol: a frame that does not follow the protocol
    ├── PathRefused         xb.core.paths: a path outside the allowed model folders
    ├── ModelFileError      xb.core.modelfile: a model file that cannot be read
    ├── RegistryError       xb.core.registry: a family that cannot be registered
    ├── KeysError           xb.core.keys: a CURVE key that cannot be read or written
    ├── CacheError          xb.core.model_cache: a cache entry that is not there
    ├── PlacementError      xb.broker.placement: no worker has room for a replica
    ├── BrokerStartError    xb.broker.process: the broker process did not start
    ├── BackendError        xb.worker.backend: an engine refused or failed a request
    ├── LoadError           xb.worker.model_process: a model that cannot be loaded
    ├── DownloadError       xb.worker.download: a model file that cannot be fetched
    ├── APIError            xb.api.errors: an answer as the OpenAI error object
    ├── APIKeyError         xb.api.auth: an API key that cannot be used
    └── ClientError         xb.client.errors: the API answered with an error, or not at all
        ├── APIConnectionError → APITimeoutError
        ├── APIStreamError
        └── APIStatusError → BadRequestError, AuthenticationError, NotFoundError, ...
"""

from __future__ import annotations


class XbError(Exception):
    """Something xb refused or could not do; the message says what and how to fix it."""
