"""ZeroMQ socket settings every xb peer shares: CURVE, heartbeats and queue bounds.

Workers and facades are DEALERs that connect to the broker's ROUTER. Each side sends
ZMTP heartbeats, so a connection whose other end vanished (a cut cable, a frozen host) is
closed within ``_TIMEOUT_MS`` and the DEALER reconnects by itself. A DEALER queues frames
only on a live connection (``IMMEDIATE``): while there is none a send fails at once, and
the sender decides what to keep (the worker keeps its final frames, see worker/server.py)
instead of frames piling up unseen, to arrive from an unknown peer after a reconnect.
"""

from __future__ import annotations

from typing import Any

import zmq

from xb.core.keys import KeyPair, PeerKeys

_HEARTBEAT_MS = 1000
_TIMEOUT_MS = 3000
# Frames queued per peer at most; past it a send fails, and the sender ends what it was
# sending with an error instead of waiting without bound.
HIGH_WATER = 10_000


def _common(sock: zmq.Socket[Any]) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HIGH_WATER)
    sock.setsockopt(zmq.RCVHWM, HIGH_WATER)
    sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _TIMEOUT_MS)
    sock.setsockopt(zmq.HEARTBEAT_TTL, _TIMEOUT_MS)


def configure_peer(sock: zmq.Socket[Any], keys: PeerKeys | None) -> None:
    """Set up a worker's or facade's DEALER: CURVE-encrypted unless ``keys`` is None."""
    _common(sock)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    if keys is not None:
        sock.curve_secretkey = keys.own.secret
        sock.curve_publickey = keys.own.public
        sock.curve_serverkey = keys.broker


def configure_router(sock: zmq.Socket[Any], keys: KeyPair | None) -> None:
    """Set up the broker's ROUTER. Peers get identities from it (they set none), so no
    peer can claim another's; a frame for a peer that is gone raises instead of vanishing."""
    _common(sock)
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    if keys is not None:
        sock.setsockopt(zmq.ZAP_DOMAIN, b"xb")
        sock.curve_server = True
        sock.curve_secretkey = keys.secret
        sock.curve_publickey = keys.public
