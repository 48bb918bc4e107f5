"""What the routes share, held once on the app by ``create_app``: ``facade(request)``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from xb.api.auth import APIKeys
from xb.api.bridge import BrokerBridge
from xb.api.limits import Limits
from xb.api.metrics import Metrics
from xb.core.registry import Registry


@dataclass(frozen=True)
class Facade:
    bridge: BrokerBridge  # the link to the broker
    registry: Registry  # the built-in model families (registered ones are the broker's)
    metrics: Metrics
    limits: Limits
    api_keys: APIKeys


def facade(request: Request) -> Facade:
    found: Facade = request.app.state.facade
    return found
