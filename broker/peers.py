"""Who may talk to the broker: ZeroMQ CURVE with the allow-list under ``$XB_HOME/keys``.

pyzmq's authenticator answers ZAP requests in a thread of its own, so a handshake never
waits on the broker's loop. The allow-list is read again whenever its folder changes, so a
key put there with ``xb keys allow`` takes effect for the next connection.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from xb.core.keys import allowed, keys_dir
from xb.core.throttle import Throttle

log = logging.getLogger("xb.broker")


class Allowlist:
    """pyzmq's credentials provider: a public key is welcome if it is in ``allowed/``."""

    def __init__(self, home: Path) -> None:
        self._folder = keys_dir(home) / "allowed"
        self._home = home
        self._keys: set[bytes] = set()
        self._stamp: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self._warn = Throttle(log)
        self.refused = 0  # handshakes refused, for the metrics

    def _current(self) -> set[bytes]:
        try:
            stat = self._folder.stat()
            stamp = (stat.st_mtime, sum(1 for _ in self._folder.iterdir()))
        except OSError:
            return set()
        with self._lock:
            if stamp != self._stamp:
                self._keys, self._stamp = allowed(self._home), stamp
            return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self._current():
            return True
        self.refused += 1
        name = key.decode(errors="replace")
        # One line per interval for all refused keys: a rogue can make new keys at will.
        self._warn.warning("*", "refused", "refused a peer whose key %s is not allowed", name)
        return False


def authenticate(
    ctx: zmq.Context[zmq.Socket[bytes]], home: Path
) -> tuple[ThreadAuthenticator, Allowlist]:
    """Start answering CURVE handshakes for sockets of ``ctx`` in the "xb" domain."""
    authenticator = ThreadAuthenticator(ctx, log=logging.getLogger("xb.broker.auth"))
    authenticator.start()
    allowlist = Allowlist(home)
    authenticator.configure_curve_callback("xb", credentials_provider=allowlist)
    return authenticator, allowlist
