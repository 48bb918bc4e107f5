"""How many threads each decoding step uses: measured, so that losing a core never stalls.

llama.cpp's CPU threads meet at a spinning barrier several hundred times per token. While
they all have a core, more threads are faster (on two cores, two threads stream 40-70%
more tokens than one); when another process takes one of those cores, every barrier waits
for a descheduled thread and a step gets 3-20 times slower (docs/batching.md, "Threads").

So the engine times its steps, grouped by size (tokens in the batch, to the next power of
two). Each size uses one setting, one thread or the replica's whole share, and now and
then tries the other for ``PROBE_STEPS`` steps. The two are compared on steps taken one
right after the other, because a step's time also grows with the context: a measurement
from a while ago is no yardstick. The other setting is tried after ``PROBE_SECONDS``, and
half as often each time it loses (up to ``MAX_PROBE_SECONDS``); at once when a step takes
``SUDDEN`` times its recent median (a core was just taken, or given back); and a probe step
far slower than the setting in use ends the probe there. So a busy machine costs a slow
step or two, and a steady one hardly any probing.

Prompt chunks (``PROMPT_TOKENS`` tokens or more) are not tuned on their own: they come
seldom, each at another context length, so steps of one size are no yardstick for each
other, and a probe with one thread cost a follow-up's first token 30-40 ms (measured on
the 512x8 model: a 1,000-token history's follow-up took 42-56 ms, or 76-81 ms when its
chunk happened to be a probe). Whether a core is free is what the frequent small steps
keep finding out, but not every win of one thread there says so: a step of a token or
two is so short that the threads' meeting costs a share of it, and one thread can win it
by a little while the server's other processes are busy sending tokens, where a prompt
chunk, all arithmetic, is still twice as fast on two (the 61-token chunk of that
follow-up: 37 ms on one thread, 20 on two). So prompt chunks use one thread only when the
latest comparison of small steps found the whole share ``_BAD`` times slower than one
thread: a core taken, not a meeting's cost.

Steps that check speculative drafts follow the same verdict: their sizes change from step
to step (one sequence's 9 tokens, then 17), so they are no yardstick for each other either,
and they are all arithmetic too. Tuned as sizes, they were probed on one thread three
steps in every few dozen, at twice the time each: SmolLM2's single edit stream with drafts
ran at 1.33x its speed without them, against 1.88x on two fixed threads.

The ceiling is the replica's share of the worker's cores, and the worker changes it as
its replicas start and stop working (``share``): a replica alone at work has them all.
What was learnt under each ceiling is kept apart, for when that ceiling comes back.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

PROBE_SECONDS = 1.0
MAX_PROBE_SECONDS = 16.0
PROBE_STEPS = 3
SUDDEN = 3.0  # a step this many times its recent median sends for a probe at once
_BAD = 2.0  # a probe this many times slower than the setting in use is backed off
_MARGIN = 0.95  # the other setting must be 5% faster to take over
PROMPT_TOKENS = 32  # a step this big reads a prompt: it follows the small steps' setting


def size_class(tokens: int) -> int:
    return max(tokens - 1, 0).bit_length()


@dataclass
class _Size:
    threads: int
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=PROBE_STEPS))
    probe: list[float] | None = None  # step times of the other setting, while trying it
    next_probe: float = 0.0
    interval: float = PROBE_SECONDS


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
        self._learnt: dict[int, dict[int, _Size]] = {}  # per ceiling
        self._left: dict[int, float] = {}  # when each ceiling was last given up
        self._sizes = self._learnt.setdefault(self.ceiling, {})
        self._verdict = self.ceiling  # what prompt chunks use: the latest comparison's word
        # The step being taken tries the other setting: its time says how fast that one is,
        # not how fast steps of its size are (speculative decoding's step clock skips it).
        self.trying = False

    def share(self, ceiling: int) -> None:
        """Tune under another ceiling from the next step on: the replica's share of the
        cores changed."""
        ceiling = max(ceiling, 1)
        if ceiling == self.ceiling:
            return
        now = self._clock()
        self._left[self.ceiling] = now
        self.ceiling = ceiling
        self._sizes = self._learnt.setdefault(ceiling, {})
        self._verdict = ceiling
        # Shares that come and go every few steps (another replica's short requests) keep
        # what they learnt; one given up a while ago is confirmed soon.
        if now - self._left.get(ceiling, -PROBE_SECONDS) >= PROBE_SECONDS:
            for size in self._sizes.values():
                size.recent.clear()
                size.probe, size.next_probe = None, 0.0
        self._use(ceiling)

    def _other(self, threads: int) -> int:
        return 1 if threads == self.ceiling else self.ceiling

    def _size(self, tokens: int) -> _Size:
        size = self._sizes.get(size_class(tokens))
        if size is None:  # a new size starts with every thread: larger batches gain most
            size = self._sizes[size_class(tokens)] = _Size(self.ceiling)
        return size

    def before(self, tokens: int, alike: bool = True) -> None:
        """Pick the thread count for a step of ``tokens`` tokens; ``alike`` False for a
        step that is no yardstick for others of its size (it checks drafts)."""
        self.trying = False
        if self.ceiling == 1:
            return
        if tokens >= PROMPT_TOKENS or not alike:
            self._use(self._verdict)
            return
        size = self._size(tokens)
        ready = len(size.recent) == PROBE_STEPS and self._clock() >= size.next_probe
        if size.probe is None and ready:
            size.probe = []
        self.trying = size.probe is not None
        self._use(self._other(size.threads) if self.trying else size.threads)

    def after(self, tokens: int, seconds: float, alike: bool = True) -> None:
        """Record how long the step took."""
        if self.ceiling == 1 or tokens >= PROMPT_TOKENS or not alike:
            return
        size = self._size(tokens)
        if size.probe is None:
            if len(size.recent) == PROBE_STEPS and seconds > SUDDEN * statistics.median(
                size.recent
            ):
                size.next_probe = 0.0  # a core was taken, or given back: compare now
            size.recent.append(seconds)
            return
        size.probe.append(seconds)
        base = statistics.median(size.recent)
        if len(size.probe) < PROBE_STEPS and seconds <= _BAD * base:
            return
        tried = statistics.median(size.probe)
        whole, one = (base, tried) if size.threads == self.ceiling else (tried, base)
        self._verdict = 1 if whole >= _BAD * one else self.ceiling
        if tried < _MARGIN * base:
            size.threads = self._other(size.threads)
            size.recent = deque(size.probe, maxlen=PROBE_STEPS)
            size.interval = PROBE_SECONDS
        else:  # the choice holds: ask again later, and later
            size.interval = min(size.interval * 2, MAX_PROBE_SECONDS)
        size.probe = None
        size.next_probe = self._clock() + size.interval

    def _use(self, threads: int) -> None:
        if threads != self.threads:
            self.threads = threads
            self._apply(threads)
