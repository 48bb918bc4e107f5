"""Registered model families are the broker's, so that every facade sees the same: files
under the home of its state file, read once and kept up to date here."""

from __future__ import annotations

import msgspec

from xb.broker.views import page_of
from xb.core import protocol as p
from xb.core.registry import ModelFamily, Registry, RegistryError, parse_family


class Families:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._known: dict[str, ModelFamily] | None = None  # read at the next call when None

    def answer(self, message: p.RegisterFamily | p.UnregisterFamily | p.ListFamilies) -> p.Message:
        """The reply to a facade's call: a page of families, an ACK, or why not."""
        if self._known is None:
            self._known = self.registry.custom()
        if isinstance(message, p.ListFamilies):
            names = page_of(sorted(self._known), message.offset, message.limit)
            bodies = [msgspec.json.encode(self._known[name]) for name in names]
            return p.Families(message.request_id, bodies, len(self._known))
        try:
            if isinstance(message, p.RegisterFamily):
                family = parse_family(message.family)
                self.registry.register(family, overwrite=message.overwrite, persist=message.persist)
            else:
                self.registry.unregister(message.model_name)
        except RegistryError as exc:
            return p.Error(message.request_id, p.ErrorCode.INVALID_REQUEST, str(exc))
        finally:
            self._known = None
        return p.Ack(message.request_id)
