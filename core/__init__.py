"""xb: serve large language models across one or many machines."""

__version__ = "0.1.0"
