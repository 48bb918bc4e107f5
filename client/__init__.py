"""The Python client and the ``xb`` command line, both speaking the REST API."""

from xb.client.client import Client, ClientError

__all__ = ["Client", "ClientError"]
