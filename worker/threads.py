"""How many threads each decoding step uses: measured, so that losing a core never stalls.

llama.cpp's CPU threads meet at a spinning barrier several hundred times per token. While
they all have a core, more threads are faster (on two cores, two threads stream 40-70%
more tokens than one); when another process takes one of those cores, every barrier waits
for a descheduled thread and a step gets 3-20 times slower (README, "Threads").

So the engine times its steps. Steps are grouped by their size (tokens in the batch, to
the next power of two); for each size the tuner keeps the latest time with one thread and
with the full count, and uses whichever was faster. The setting not in use is measured
again now and then: every ``PROBE_SECONDS``, and less often (up to ``MAX_PROBE_SECONDS``)
while it keeps losing badly; a probe step far slower than the best ends the probe at once.
A machine that gets busy is noticed within a step or two, and costs one slow step a probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

PROBE_SECONDS = 1.0
MAX_PROBE_SECONDS = 16.0
PROBE_STEPS = 3  # steps measured per probe; the fastest of them counts
_SMOOTHING = 0.3  # weight of a new measurement of the setting in use
_BAD = 2.0  # a probe step this many times slower than the best ends the probe


def size_class(tokens: int) -> int:
    return max(tokens - 1, 0).bit_length()


@dataclass
class _Timing:
    seconds: float = 0.0  # per step
    measured: float = float("-inf")  # when
    interval: float = PROBE_SECONDS  # before it is probed again


class ThreadTuner:
    def __init__(
        self,
        ceiling: int,
        apply: Callable[[int], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = max(ceiling, 1)
        self._apply = apply
        self._clock = clock
        self.threads = self.ceiling
        self._times: dict[tuple[int, int], _Timing] = {}  # (size class, threads)
        self._probing: int | None = None  # the thread count being probed
        self._probe_size = 0
        self._probe: list[float] = []

    def _timing(self, size: int, threads: int) -> _Timing:
        return self._times.setdefault((size, threads), _Timing())

    def before(self, tokens: int) -> None:
        """Pick the thread count for a step of ``tokens`` tokens."""
        if self.ceiling == 1:
            return
        size, now = size_class(tokens), self._clock()
        if self._probing is not None and size != self._probe_size:
            self._probing = None  # steps of another size say nothing about this one
        if self._probing is None:
            for threads in (1, self.ceiling):
                timing = self._timing(size, threads)
                if now - timing.measured >= timing.interval and threads != self.threads:
                    self._probing, self._probe_size, self._probe = threads, size, []
                    break
                if timing.measured == float("-inf"):  # the setting in use, never timed
                    self._probing, self._probe_size, self._probe = threads, size, []
                    break
        if self._probing is not None:
            self._use(self._probing)
            return
        one, full = self._timing(size, 1), self._timing(size, self.ceiling)
        self._use(1 if one.seconds < full.seconds else self.ceiling)

    def after(self, tokens: int, seconds: float) -> None:
        """Record how long the step took."""
        if self.ceiling == 1:
            return
        size, now = size_class(tokens), self._clock()
        timing = self._timing(size, self.threads)
        if self._probing is None:
            # The setting in use stays measured: a machine that got busy shows here first.
            timing.seconds += _SMOOTHING * (seconds - timing.seconds)
            timing.measured = now
            return
        self._probe.append(seconds)
        best = self._timing(size, self.ceiling if self._probing == 1 else 1).seconds
        if len(self._probe) < PROBE_STEPS and not (best and seconds > _BAD * best):
            return
        result = min(self._probe)
        # A setting that loses badly is tried less and less often; one that holds its own,
        # every PROBE_SECONDS.
        losing = best and result > _BAD * best
        timing.interval = min(timing.interval * 2, MAX_PROBE_SECONDS) if losing else PROBE_SECONDS
        timing.seconds, timing.measured = result, now
        self._probing = None

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self.threads = threads
            self._apply(threads)
