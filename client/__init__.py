"""The Python clients and the ``xb`` command line, all speaking the REST API."""

from xb.client.aio import AsyncClient, AsyncModelHandle
from xb.client.calls import ClientError
from xb.client.client import Client, ModelHandle

__all__ = ["AsyncClient", "AsyncModelHandle", "Client", "ClientError", "ModelHandle"]
