"""One sequence of the batch engine (``llama_engine``), and the rows it feeds a step:
its next token and any draft (``speculative``), or a chunk of its prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

from xb.core.protocol import Priority, Usage
from xb.worker.answer import Answer
from xb.worker.draft_model import CATCH_UP_SPREAD, DraftModel
from xb.worker.llama_echo import Echo
from xb.worker.llama_sampling import Sampler
from xb.worker.parking import CellBytes
from xb.worker.speculative import NGRAM_MAX, Candidate, Drafter, Speculation


@dataclass(eq=False)
class Row:
    """What one sequence feeds a step: tokens, and which of their logits are wanted."""

    sequence: Sequence
    tokens: list[int]
    sample: bool  # the last token's logits give the next token
    score: bool = False  # every token's logits score the prompt
    drafts: list[int] = field(default_factory=list)  # guessed tokens after the first, checked
    source: Speculation | None = None  # the drafting state its drafts came from


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt: list[int]
    limit: int  # tokens it may generate
    sampler: Sampler
    answer: Answer
    top_logprobs: int | None  # None: no logprobs
    seq_id: int = -1
    kv: list[int] = field(default_factory=list)  # tokens whose cells are in the cache
    cached: int = 0  # prompt tokens found in the prefix cache
    produced: int = 0
    next_token: int | None = None  # sampled, decoded in the next step
    echo: Echo | None = None  # its prompt is scored, token by token
    text: str | None = None  # a chat's prompt as the template rendered it
    closing: bool = False  # answered; its last token is decoded so that its cells hold all
    priority: Priority = "interactive"
    tenant: str = ""
    parked: CellBytes | None = None  # its cells while it is preempted
    preemptions: int = 0
    speculation: Speculation | None = None  # None: it does not draft
    lookup: Speculation | None = None  # n-gram drafting beside a draft model's

    @property
    def usage(self) -> Usage:
        n = len(self.prompt)
        sources = [s for s in (self.speculation, self.lookup) if s is not None]
        accepted = sum(s.accepted for s in sources)
        rejected = sum(s.drafted for s in sources) - accepted
        return Usage(n, self.produced, n + self.produced, self.cached, accepted, rejected)


def draft(
    rows: list[Row],
    drafter: Drafter,
    n_batch: int,
    model: DraftModel | None = None,
    timed: bool = True,
) -> None:
    """Lengthen a step's generating rows by the drafts that pay (``Drafter.plan``): n-gram
    proposals, and beside a draft ``model`` its proposals too, each sequence drafting
    from the source ``Drafter.prefer`` expects more of. A draft model's cost per drafted
    token is in the plan, and it runs only for the sequences the plan gives a draft from
    it, as long as the plan allows (it stops earlier where it is unsure); ``timed`` False
    where its time is no sample of that cost."""
    drafting = [r for r in rows if r.sample and r.sequence.speculation is not None]
    if not drafting:
        return
    candidates, contexts = [], []
    for row in drafting:
        sequence = row.sequence
        speculation = sequence.speculation
        assert speculation is not None and sequence.next_token is not None
        ngrams = (speculation if sequence.lookup is None else sequence.lookup).ngrams
        context = ngrams.follow(sequence.kv, sequence.next_token)
        room = sequence.limit - sequence.produced
        if model is None:
            proposal = ngrams.propose(context, drafter.draft_tokens)
            candidate = Candidate(speculation, proposal, room, ngrams.matched == NGRAM_MAX)
        else:  # what the draft model would say is not known before it runs
            guess = [0] * drafter.draft_tokens
            # Reading what it has not read (a prompt a dear draft model did not read along,
            # what lookup's drafts gave) is paid once, spread over the tokens the answer
            # may still take; what a step of its own leaves behind is in ``cost`` already.
            behind = model.lag(sequence.seq_id, context) - (drafter.draft_tokens + 1)
            spread = max(min(room, CATCH_UP_SPREAD), 1)
            cost = model.cost + model.read_cost * max(behind, 0) / spread
            candidate = Candidate(speculation, guess, room, True, cost)
            lookup = sequence.lookup
            proposal = [] if lookup is None else ngrams.propose(context, drafter.draft_tokens)
            if lookup is not None and proposal:
                strong = ngrams.matched == NGRAM_MAX
                found = Candidate(lookup, proposal, room, strong)
                candidate = drafter.prefer(found, candidate, len(rows))
        candidates.append(candidate)
        contexts.append(context)
    plans = drafter.plan(candidates, len(rows), n_batch - len(rows))
    if model is not None:
        # The draft model drafts where its own proposal was the one planned.
        asked = [
            c.speculation is r.sequence.speculation
            for c, r in zip(candidates, drafting, strict=True)
        ]
        wanted = [
            (row.sequence.seq_id, context, len(plan) if ask else 0)
            for row, context, plan, ask in zip(drafting, contexts, plans, asked, strict=True)
        ]
        if any(k for _, _, k in wanted):
            proposed = model.propose(wanted, timed)
            plans = [
                new if ask else old for new, old, ask in zip(proposed, plans, asked, strict=True)
            ]
    for row, drafted, candidate in zip(drafting, plans, candidates, strict=True):
        row.drafts, row.tokens = drafted, row.tokens + drafted
        row.source = candidate.speculation
        if not drafted:  # a probe the draft model had nothing for is no probe
            candidate.speculation.probing = False
