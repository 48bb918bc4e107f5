"""Speculative decoding for the batch engine: n-gram drafts, how they are checked, and
when they pay.

**Drafts.** Each drafting sequence keeps an index of the n-grams of its own context
(prompt and output). Its latest ``NGRAM_MAX`` to ``NGRAM_MIN`` tokens are looked up there,
longest first; the tokens that followed their latest earlier occurrence are the draft
(prompt lookup: an edit, a rewrite or an answer quoting a document repeats long runs of
its prompt). A draft that runs into the end of the context repeats the period it found,
which is what a looping answer does next.

**Checking.** The engine decodes a sequence's next token and its draft in one row of the
step's batch, with logits at each position. Position ``i``'s logits give the target
model's own choice there, drawn by the sequence's own sampler chain (logit bias,
penalties, grammar, temperature, seed); the draft's token ``i`` is accepted when that
choice equals it, and the first choice that differs ends the check and is the next token
(``verify``). For greedy decoding the output is then the output without drafts (as far
as llama.cpp computes a token's logits to the last digit alike in steps of any size). For
sampling this is the speculative sampling acceptance rule for a draft that puts all its
probability on one token ``x``: accept ``x`` with probability ``min(1, p(x) / q(x)) = p(x)``
(``q(x) = 1``), and on rejection draw from ``max(0, p - q)`` renormalised, which is ``p``
with ``x`` removed. Drawing ``t ~ p`` and accepting when ``t == x`` does both at once: it
accepts with probability ``p(x)``, and a rejected draw is distributed as ``p`` given
``t != x``. So every emitted token is distributed as the model's own ``p``, the final
distribution of the sequence's sampler chain, and a request draws no more random numbers
than it would without drafts.

**When it pays.** Each sequence tracks how often its drafts' first tokens come true
(``first``), and how often a later token does once the one before it did (``rate``),
as decaying counts. A step's drafts are chosen by ``Drafter.plan`` against the engine's
own step timings (``step_clock.StepClock``: seconds per step by the tokens in it, measured
once when the model loads and then on every step): a draft of ``k`` tokens is expected
to add ``f (1 + r + ... + r^(k-1))`` tokens, a step costs a part for each
length of its rows (``step_time``), and drafts are planned only if the batch's expected
tokens per second rise with them. While some sequences of the batch do not draft,
the drafts may lengthen the step by ``SHARE_SLOWER`` at most, so that the others' tokens per
second stay what they were. A sequence whose drafts do not pay does not draft; when its
context's longest n-gram matches (a strong proposal), it probes: a short draft of
``PROBE_TOKENS``, whose outcome updates its rates (and which goes and measures its step
where the clock has no live time of its size). The sequences that may probe at a step
probe together where one alone would not pay (a longer row alone costs a second part of
the step, ``step_time``). A probe that fails waits ``PROBE_GAP``
steps before the next, twice as long each time it fails again, so an answer with nothing
to guess pays for a few probes only.

**Two sources.** Beside a draft model (``draft_model``), a sequence keeps one
``Speculation`` for the draft model's drafts and one for n-gram lookup's, and each step
``Drafter.prefer`` picks the source whose draft is expected to pay more, on each one's
rates; a draft model's decoding is a cost per drafted token (``Candidate.cost``) that the
plan adds to the step's time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

from xb.worker.step_clock import StepClock, step_time, step_times

NGRAM_MAX = 4  # the longest context suffix looked up
NGRAM_MIN = 2  # shorter matches propose noise: the one token before is not enough
PRIOR_RATE = 0.35  # how often a new sequence's drafts' first tokens are expected to come true
DECAY = 0.8  # weight of what earlier checks showed, at each check that shows a rate anew
SHARE_SLOWER = 0.03  # how much longer drafts may make a step that others share
MARGIN = 1.02  # a draft must raise expected tokens per second by 2%: timings are noisy
LENGTHS = (1, 2, 3, 4, 6, 8, 12, 16, 24)  # draft lengths weighed for some sequences
PROBE_TOKENS = 1  # a probe's draft: a failed one costs most of a step more
PROBE_GAP = 32  # steps with a proposal that a failed probe waits; doubled at each failure ...
MAX_PROBE_GAP = 1024  # ... up to this
REFRESH = 8  # steps timed before the plan works out its table of step times again
TRIALS = 4  # strong guesses of n-gram lookup beside a draft model taken before rates decide


class NgramIndex:
    """Where each n-gram of a growing context last ended."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # context positions whose ending n-grams are in ``_last``
        self.matched = 0  # the length of the n-gram the latest proposal came from
        self._context: list[int] = []  # ``follow``'s

    def follow(self, kv: list[int], next_token: int) -> list[int]:
        """The sequence's context: the tokens of its cells, then its next token. Kept here
        and extended at each step, not copied: between steps a sequence's cells only grow
        (the next token, the draft's accepted tokens; the rest are cut before). A context
        that does not continue the last one is taken whole, and indexed afresh."""
        context = self._context
        if len(context) > len(kv) or (context and context[-1] != kv[len(context) - 1]):
            context.clear()
            self._last.clear()
            self._indexed = 0
        context += kv[len(context) :]
        context.append(next_token)
        return context

    def propose(self, context: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest recent suffix of ``context`` the
        last time it occurred; ``context`` only ever grows between calls."""
        end = len(context) - 1  # the suffix's own occurrence is not indexed yet
        for stop in range(self._indexed, end):
            for n in range(NGRAM_MIN, NGRAM_MAX + 1):
                if stop + 1 >= n:
                    self._last[tuple(context[stop + 1 - n : stop + 1])] = stop + 1
        self._indexed = max(self._indexed, end)
        self.matched = 0
        for n in range(NGRAM_MAX, NGRAM_MIN - 1, -1):
            if end + 1 < n:
                continue
            at = self._last.get(tuple(context[end + 1 - n :]))
            if at is not None:
                period = len(context) - at
                self.matched = n
                return [context[at + i % period] for i in range(k)]
        return []


@dataclass
class Speculation:
    """One sequence's drafting: its n-gram index, how often its drafts came true, and
    when it may probe next.

    Two rates, each a decaying count over its checks: how often a draft's first token
    came true (``first``), and how often each later one did, given that the one before
    it had (``rate``). A draft either repeats something the answer really repeats, and
    then runs on, or it does not, and then fails at once: one rate per token took a single
    lucky seven-token run of a chat for the habit of a sequence (its rate went from 0.71
    to 0.96, and its next three drafts of 10, 7 and 7 tokens were all wrong at the first),
    where each check is one try of the first token here."""

    ngrams: NgramIndex = field(default_factory=NgramIndex)
    first_hits: float = PRIOR_RATE  # decayed counts of checks whose first token came true ...
    firsts: float = 1.0  # ... and of checks
    hits: float = 0.0  # decayed counts of later tokens that came true ...
    tries: float = 0.0  # ... and of later tokens checked after one that came true
    drafted: int = 0
    accepted: int = 0
    trials: int = 0  # steps ``Drafter.prefer`` took this source to try it
    probing: bool = False  # its pending draft is a probe
    wait: int = 0  # steps until it may probe again
    gap: int = PROBE_GAP  # the wait after its next failed probe

    @classmethod
    def expecting(cls, rate: float) -> Speculation:
        """A new sequence's drafting, whose drafted tokens are expected to come true at
        ``rate`` at first."""
        return cls(first_hits=rate)

    @property
    def first(self) -> float:
        return self.first_hits / self.firsts

    @property
    def rate(self) -> float:
        """Later tokens' rate, taken as the first token's until drafts longer than one
        token show otherwise (probes and one-token drafts say nothing of it)."""
        return (self.hits + self.first) / (self.tries + 1.0)

    def gains(self, k: int) -> list[float]:
        """The tokens a draft of ``0 .. k`` tokens is expected to add."""
        first, rate = self.first, self.rate
        return list(accumulate((first * rate**i for i in range(k)), initial=0.0))

    def record(self, drafted: int, accepted: int) -> None:
        """A check of ``drafted`` tokens accepted the first ``accepted``."""
        self.drafted += drafted
        self.accepted += accepted
        self.first_hits = self.first_hits * DECAY + (accepted > 0)
        self.firsts = self.firsts * DECAY + 1
        if accepted and drafted > 1:
            # Tokens after the first miss were not tested on their own: count the hits and
            # the one miss, as a run of coin flips that stopped there.
            later = accepted - 1
            self.hits = self.hits * DECAY + later
            self.tries = self.tries * DECAY + later + (accepted < drafted)
        if self.probing:  # a probe that came true may be followed by another at once
            self.probing = False
            if accepted == drafted:
                self.gap = PROBE_GAP
            else:
                self.wait, self.gap = self.gap, min(self.gap * 2, MAX_PROBE_GAP)

    def rest(self) -> bool:
        """A step it does not draft in; True when it may probe now."""
        self.wait = max(self.wait - 1, 0)
        return not self.wait


@dataclass(frozen=True)
class Candidate:
    """A sequence that may draft this step: its state (of the source it drafts from), its
    proposal, the most tokens it may still produce, whether the proposal is strong enough
    to probe with, and the seconds each drafted token costs before the step (a draft
    model's decoding; n-gram lookup costs nothing)."""

    speculation: Speculation
    proposal: list[int]
    room: int
    strong: bool = False
    cost: float = 0.0


class Drafter:
    def __init__(self, draft_tokens: int, clock: StepClock | None = None) -> None:
        self.draft_tokens = max(draft_tokens, 0)
        self.clock = clock or StepClock()
        self._table: tuple[tuple[StepClock, int], int, list[float]] | None = None

    def _times(self, top: int) -> list[float] | None:
        """Step times by size, up to ``top`` tokens at least: the clock's, worked out
        again once it has timed ``REFRESH`` more steps or measured them afresh at load
        (working them out takes 30-70 µs, where a step of the 512x8 test model takes 2-3
        ms)."""
        clock, table = self.clock, self._table
        version = (clock, clock.calibrations)
        size = max(top, 64)
        if table is not None:
            size = max(size, len(table[2]) - 1)  # a table never shrinks: steps grow again
            if table[0] != version or clock.count - table[1] >= REFRESH:
                table = None
        if table is None or len(table[2]) <= top:
            known = clock.known()
            if not known:
                return None
            table = self._table = (version, clock.count, step_times(known, size))
        return table[2]

    def plan(self, candidates: list[Candidate], rows: int, budget: int) -> list[list[int]]:
        """Each candidate's draft for a step of ``rows`` generating sequences (the
        candidates among them), adding ``budget`` tokens at most.

        The plans weighed: the ``m`` candidates likeliest to be right draft ``k`` tokens each
        (fewer where their proposal or room is shorter), for ``m`` of 1, 2, 4, ... and every
        ``k`` (of ``LENGTHS`` for the ``m`` between one and all); the one whose expected
        tokens per second are highest is taken, if it beats no drafts by ``MARGIN``. Equal
        drafts are what pays: see ``step_time``. Then sequences with a strong guess but no
        draft may probe, if a probe that came true would pay. Planning runs at every step:
        30 microseconds for one sequence, 65 for four (on this machine)."""
        drafts: list[list[int]] = [[] for _ in candidates]
        most = [min(len(c.proposal), c.room, self.draft_tokens, budget) for c in candidates]
        if not any(most):
            return drafts
        times = self._times(rows + sum(most))
        if times is None:
            return drafts
        base = times[rows]
        # A step that sequences without a proposal share may grow only a little.
        capped = rows > sum(1 for c in candidates if c.proposal)
        idle = [1] * (rows - len(candidates))  # rows without a candidate: a token each
        gains = [c.speculation.gains(k) for c, k in zip(candidates, most, strict=True)]
        # Likeliest first: the most tokens expected from the longest draft each may make,
        # for the time it adds to the step (a draft model's decoding; checking alike).
        order = sorted(
            (i for i in range(len(candidates)) if most[i]),
            key=lambda i: -gains[i][-1] / (base + candidates[i].cost * most[i]),
        )

        def worth(
            lengths: list[int], bonus: float = 0.0, unmeasured: float | None = None
        ) -> float | None:
            """Expected tokens per second of a plan (``bonus`` tokens more); None when it
            adds too many tokens or slows a shared step too much. A step of one part whose
            size the clock has not measured live is taken to last ``unmeasured`` seconds,
            where that is given (a probe that goes and measures it)."""
            if sum(lengths) > budget:
                return None
            row_lengths = [*(1 + k for k in lengths), *idle]
            step = step_time(times, row_lengths)
            if unmeasured is not None and len(set(row_lengths)) == 1:
                measured = sum(row_lengths) in self.clock.measured()
                step = step if measured else unmeasured
            took = step + sum(candidates[i].cost * k for i, k in enumerate(lengths))
            if capped and took > base * (1 + SHARE_SLOWER):
                return None
            gain = rows + bonus + sum(gains[i][k] for i, k in enumerate(lengths))
            return gain / took

        best, value = [0] * len(candidates), rows / base * MARGIN
        counts = sorted({*(2**j for j in range(len(order).bit_length())), len(order)} - {0})
        for m in counts:
            top = order[:m]
            longest, shortest = max(most[i] for i in top), min(most[i] for i in top)
            every = m in (1, len(order))  # one sequence alone, or all: every length
            for k in (
                range(1, longest + 1) if every else (*(n for n in LENGTHS if n < longest), longest)
            ):
                if k <= shortest and m * k <= budget:  # equal drafts: one part or two
                    took = times[rows * (1 + k)] if m == rows else times[rows] + times[m * k]
                    took += k * sum(candidates[i].cost for i in top)
                    shared = capped and took > base * (1 + SHARE_SLOWER)
                    gain = rows + sum(gains[i][k] for i in top)
                    weighed = None if shared else gain / took
                else:
                    plan = [0] * len(candidates)
                    for i in top:
                        plan[i] = min(k, most[i])
                    weighed = worth(plan)
                if weighed is not None and weighed > value:
                    best, value = [0] * len(candidates), weighed
                    for i in top:
                        best[i] = min(k, most[i])
        ready = [
            i
            for i, c in enumerate(candidates)
            if not best[i] and most[i] and c.speculation.rest() and c.strong
        ]
        # A probe is worth it if its guesses, once right, would pay. Together first: a
        # probe alone lengthens one row, so the step needs a second part, which may cost
        # more than one token brings (with four rows of a token each, a fifth token in a
        # part of its own cost SmolLM2 28% more time for 25% more tokens), where every
        # ready sequence's probe rides in the step's one part.
        #
        # A probe of n-gram lookup whose step is one part of a size the clock has not
        # measured live (``StepClock.measured``) goes and measures it: it is weighed as if
        # it cost no more than the step without it. A time from the load (or worked out
        # from other sizes) may be too dear, and a size thought too dear is never tried,
        # so never measured: a replica whose steps of two tokens and more took 1.5 times
        # too long at load, the machine busy, never drafted again (no drafted token in
        # three looping answers, against 427 when timed right). Once measured, the size's
        # live times decide until it goes unused for ``STALE`` steps and is forgotten;
        # probes that fail wait as any others. (A step that also reads a prompt is not
        # timed, so a probe in it measures nothing; prompts end.) A draft model's probe
        # costs its decoding and may come back empty: it is always weighed as it is.
        for group in ([ready] if len(ready) > 1 else []) + [[i] for i in ready]:
            if any(best[i] for i in group):
                continue
            probe = [*best]
            for i in group:
                probe[i] = min(most[i], PROBE_TOKENS)
            bonus = sum(probe[i] - gains[i][probe[i]] for i in group)
            lookup = all(not candidates[i].cost for i in group)
            without = step_time(times, [*(1 + k for k in best), *idle]) if lookup else None
            if (worth(probe, bonus, without) or 0.0) > value:
                best = probe
                for i in group:
                    candidates[i].speculation.probing = True
                value = worth(best) or value
        for i, candidate in enumerate(candidates):
            drafts[i] = candidate.proposal[: best[i]]
        return drafts

    def prefer(self, lookup: Candidate, model: Candidate, rows: int) -> Candidate:
        """Which of a sequence's two proposals, an n-gram ``lookup`` and a draft ``model``'s,
        it drafts from this step: the one whose draft alone, as long as pays best, gives a
        step of ``rows`` generating sequences the more tokens per second, each by its own
        source's rates and cost; the lookup on a tie, or where the model's draft would not
        pay at all (it costs no decoding, and its probes may show that it pays). A lookup's
        first ``TRIALS`` strong guesses are taken whatever the model's rates (the plan may
        still not draft them): its rates start from a prior, and a source not tried would
        never show that it pays (one check that came true leaves its rate at 0.71, where a
        draft model's drafts may all have)."""
        if lookup.strong and lookup.speculation.trials < TRIALS:
            lookup.speculation.trials += 1
            return lookup
        longest = max(min(len(c.proposal), c.room, self.draft_tokens) for c in (lookup, model))
        times = self._times(rows + longest)
        if times is None:
            return lookup
        others = [1] * (rows - 1)

        def value(candidate: Candidate) -> float:
            """The step's expected tokens per second with the candidate's best draft."""
            most = min(len(candidate.proposal), candidate.room, self.draft_tokens)
            gains = candidate.speculation.gains(most)
            return max(
                (rows + gains[k]) / (step_time(times, [1 + k, *others]) + candidate.cost * k)
                for k in (*(n for n in LENGTHS if n < most), most)
            )

        # A model whose draft would not pay is not taken over the lookup, which may then
        # still probe and show that it pays.
        enough = max(value(lookup), rows / times[rows] * MARGIN)
        return model if value(model) > enough else lookup


def verify(
    sample: Callable[[int], int], draft: list[int], ends: Callable[[int], bool], room: int
) -> list[int]:
    """The target model's tokens for a checked draft: ``sample(i)`` draws its choice at
    draft position ``i``; the draft's tokens that it chose, then the first it did not (or
    the one after the whole draft). Stops early at a token that ends the answer, or once
    ``room`` tokens are drawn."""
    chosen: list[int] = []
    for i in range(len(draft) + 1):
        token = sample(i)
        chosen.append(token)
        if i == len(draft) or token != draft[i] or ends(token) or len(chosen) >= room:
            break
    return chosen
