"""Rate-limited warnings: one line per peer and kind of trouble per interval, with a count
of what was left out, so a misbehaving peer cannot fill the disk with log lines."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

_KEYS = 4096  # (peer, kind) pairs remembered; the oldest are forgotten first


class Throttle:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: OrderedDict[tuple[str, str], tuple[float, int]] = OrderedDict()

    def warning(self, peer: str, kind: str, message: str, *args: object) -> None:
        """Log ``message`` unless this peer had this kind of warning within the interval."""
        self._emit(peer, kind, message, args, exc_info=False)

    def exception(self, peer: str, kind: str, message: str, *args: object) -> None:
        """As ``warning``, at error level with the traceback of the exception handled now."""
        self._emit(peer, kind, message, args, exc_info=True)

    def _emit(
        self, peer: str, kind: str, message: str, args: tuple[object, ...], *, exc_info: bool
    ) -> None:
        key, now = (peer, kind), self._clock()
        last, skipped = self._last.get(key, (float("-inf"), 0))
        if now - last < self._interval:
            self._last[key] = (last, skipped + 1)
            return
        if skipped:
            message += f" ({skipped} more like it left out)"
        if exc_info:
            self._log.exception(message, *args)
        else:
            self._log.warning(message, *args)
        self._last[key] = (now, 0)
        self._last.move_to_end(key)
        if len(self._last) > _KEYS:
            self._last.popitem(last=False)
