"""One error tree: every exception class xb defines derives from ``XbError``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from xb.core.errors import XbError

pytestmark = pytest.mark.unit
# Modules that start a program or need a console when imported are left out.
SKIP = {"__main__"}


def test_every_exception_of_xb_derives_from_xb_error() -> None:
    found, strays = [], []
    for package in ("core", "broker", "worker", "api", "client", "tui", "serve"):
        root = importlib.import_module(f"xb.{package}")
        for info in pkgutil.walk_packages(root.__path__, f"xb.{package}."):
            if info.name.rsplit(".", 1)[-1] in SKIP:
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == info.name and issubclass(cls, BaseException):
                    found.append(cls.__name__)
                    if not issubclass(cls, XbError):
                        strays.append(f"{info.name}.{cls.__name__}")
    assert len(found) >= 14, found
    assert not strays, strays
