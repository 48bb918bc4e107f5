"""What a decoding step costs, by the tokens in it: the times a replica measures
(``StepClock``), a table of them by size (``step_times``), and a step's time from its
rows' lengths (``step_time``). Speculative decoding plans its drafts on them
(``speculative.Drafter``)."""

from __future__ import annotations

import math
import statistics
import time
from collections import deque
from collections.abc import Callable

import numpy as np

_RECENT = 5  # step times kept per size
_LIVE = 3  # step times of a size that outweigh the load-time measurement
STALE = 1024  # steps after which a size's live times are forgotten
_MAX_SIZE = 512  # step sizes timed; bigger steps read prompts
CALIBRATION = (1, 2, 4, 8, 16, 32, 64)  # step sizes timed when the model loads ...
CALIBRATION_SECONDS = 1.0  # ... within this time (a big model's largest sizes are guessed)


class StepClock:
    """Seconds per decoding step, by the number of tokens in it. Sizes are timed when the
    model loads (``calibrate``: each step's cost is known before the first request), and
    every step of generating rows is timed too: once a size has ``_LIVE`` recent times,
    their median is its time (a step the machine slowed once does not count for long).
    The first step of each size is not counted (llama.cpp allocates for it), and the live
    times of a size not seen for ``STALE`` steps are forgotten: the machine's load
    changes."""

    def __init__(self) -> None:
        self._base: dict[int, float] = {}  # measured at load
        self._steps: dict[int, deque[float]] = {}
        self._seen: dict[int, int] = {}  # step count when each size was last recorded
        self._count = 0
        self.calibrations = 0  # times ``calibrate`` ran

    def calibrate(self, decode: Callable[[int], float], most: int) -> None:
        """Time ``decode(n)`` for the sizes of ``CALIBRATION`` up to ``most``, each twice
        (the first allocates), the faster kept, while ``CALIBRATION_SECONDS`` last."""
        self.calibrations += 1
        deadline = time.perf_counter() + CALIBRATION_SECONDS
        for size in (n for n in CALIBRATION if n <= most):
            self._base[size] = min(decode(size), decode(size))
            if time.perf_counter() > deadline:
                break

    def record(self, tokens: int, seconds: float) -> None:
        self._count += 1
        if tokens > _MAX_SIZE:
            return
        if tokens not in self._seen:
            self._steps[tokens] = deque(maxlen=_RECENT)  # the first step of this size
        else:
            if self._count - self._seen[tokens] > STALE:
                self._steps[tokens].clear()
            self._steps[tokens].append(seconds)
        self._seen[tokens] = self._count

    @property
    def count(self) -> int:
        """Steps recorded so far."""
        return self._count

    def known(self) -> dict[int, float]:
        """The step time of each size measured, lately or at load.

        Load-time times give the shape, live ones the level: steps timed at load run back
        to back on a quiet machine with warm caches, and live ones come between sampling,
        streaming and the server's other processes (SmolLM2: one token 9.1 ms at load and
        13.3 live, 64 tokens 354 and 499; the 512x8 test model: 2.6 and 3.8 for one, 3.9
        and 5.6 for two). A size timed only at load is scaled by the live-to-load ratio of
        the nearest size between the load's smallest and largest that has ``_LIVE`` live
        times (one slow step scales no other size), so that the plan never weighs a live
        step against a load-time one (it took a two-token step of the 512x8 model for 1.01
        times a one-token step, where it costs 1.47, and drafted at any rate).

        A time that the machine slowed is worse than none (a size thought dear is never
        tried again, so never measured again), so each is taken at most as dear as any
        bigger step's, and as ``n`` steps of the smallest size (a step of ``n`` tokens does
        no more than ``n`` steps of one): a time thought too cheap is corrected as soon as
        that size is tried. Even so capped, a size may look too dear to try, so a probe
        goes and measures a size that is not ``measured`` (``speculative.Drafter.plan``)."""
        live = self._live()
        steady = {n: t for n, t in live.items() if len(self._steps[n]) >= _LIVE}
        times = {**self._base, **self._scaled(steady), **live}
        if not times:
            return times
        unit = min(times)
        ceiling = float("inf")
        for n in sorted(times, reverse=True):
            ceiling = times[n] = min(times[n], ceiling, times[unit] * n / unit)
        return times

    def _live(self) -> dict[int, float]:
        """The median of the recent steps of each size ``measured``."""
        return {n: statistics.median(self._steps[n]) for n in self.measured()}

    def measured(self) -> set[int]:
        """The sizes whose time ``known`` takes from live steps: ``_LIVE`` recent ones, or
        any for a size not timed at load. The others' times are the load's, scaled, or
        worked out from other sizes' (``step_times``)."""
        return {
            n
            for n, steps in self._steps.items()
            if self._count - self._seen[n] <= STALE
            and (len(steps) >= _LIVE or (steps and n not in self._base))
        }

    def _scaled(self, steady: dict[int, float]) -> dict[int, float]:
        """The load-time times, each by the live-to-load ratio of the nearest size (in
        doublings) of ``steady`` between the smallest and the largest size timed at load."""
        sizes = sorted(self._base)
        if not sizes:
            return {}
        at_load = [self._base[n] for n in sizes]
        ratios = {
            m: t / float(np.interp(m, sizes, at_load))
            for m, t in steady.items()
            if sizes[0] <= m <= sizes[-1]
        }
        if not ratios:
            return {}

        def nearest(n: int) -> int:
            return min(ratios, key=lambda m: (abs(math.log2(m / n)), -m))

        return {n: self._base[n] * ratios[nearest(n)] for n in sizes}

    def estimate(self, tokens: int) -> float | None:
        known = self.known()
        return step_times(known, tokens)[tokens] if known else None


def step_times(known: dict[int, float], top: int) -> list[float]:
    """The time of a step of each size from 0 to ``top`` tokens: as measured, interpolated
    between sizes that were, or extrapolated from the two largest (one measured size: a
    small cost per token is guessed, to go and measure)."""
    keys = sorted(known)
    values = [known[n] for n in keys]
    sizes = np.arange(top + 1)
    times = np.interp(sizes, keys, values)
    last = keys[-1]
    if top > last:
        beyond = sizes[last + 1 :] - last
        if len(keys) >= 2:
            slope = max((values[-1] - values[-2]) / (keys[-1] - keys[-2]), 0.0)
            times[last + 1 :] = values[-1] + slope * beyond
        else:
            times[last + 1 :] = values[-1] * (1 + 0.02 * beyond)
    return [float(t) for t in times]


def step_time(times: list[float], lengths: list[int]) -> float:
    """The time of a step whose rows (one per sequence) hold ``lengths`` tokens, given
    ``times`` by size (``step_times``). Each sequence has cells of its own, and llama.cpp
    then splits a batch into equal parts: each takes as many tokens from every sequence
    that has some left as the shortest of them has, and each part reads the weights
    again. So rows of 9, 9, 1 and 1 tokens cost a part of 4 tokens and one of 16, where
    four rows of 5 cost one part of 20 (SmolLM2: rows of 17, 1, 1 and 1 tokens took 104 ms,
    of 5, 5, 5 and 5 95 ms, and rows of 12, 10, 6 and 4 185 ms where 32 tokens in one part
    took 147)."""
    total, done = 0.0, 0
    ordered = sorted(lengths)
    for j, length in enumerate(ordered):
        if length > done:
            total, done = total + times[(len(ordered) - j) * (length - done)], length
    return total
