"""One sequence of the batch engine (``llama_engine``), and the rows it feeds a step:
its next token and any draft (``speculative``), or a chunk of its prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

from xb.core.protocol import Priority, Usage
from xb.worker.answer import Answer
from xb.worker.draft_model import DraftModel
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

    @property
    def usage(self) -> Usage:
        n, drafts = len(self.prompt), self.speculation
        accepted = drafts.accepted if drafts else 0
        rejected = drafts.drafted - accepted if drafts else 0
        return Usage(n, self.produced, n + self.produced, self.cached, accepted, rejected)


def draft(rows: list[Row], drafter: Drafter, n_batch: int, model: DraftModel | None = None) -> None:
    """Lengthen a step's generating rows by the drafts that pay (``Drafter.plan``): n-gram
    proposals, or the draft model's (``model``). The draft model's cost is in the step
    times the plan reads, so it is run only for the sequences the plan gives a draft, as
    long as the plan allows (it stops earlier where it is unsure)."""
    drafting = [r for r in rows if r.sample and r.sequence.speculation is not None]
    if not drafting:
        return
    candidates, contexts = [], []
    for row in drafting:
        sequence = row.sequence
        speculation = sequence.speculation
        assert speculation is not None and sequence.next_token is not None
        context = speculation.ngrams.follow(sequence.kv, sequence.next_token)
        room = sequence.limit - sequence.produced
        if model is None:
            proposal = speculation.ngrams.propose(context, drafter.draft_tokens)
            strong = speculation.ngrams.matched == NGRAM_MAX
        else:  # what the draft model would say is not known before it runs
            proposal, strong = [0] * drafter.draft_tokens, True
        candidates.append(Candidate(speculation, proposal, room, strong))
        contexts.append(context)
    plans = drafter.plan(candidates, len(rows), n_batch - len(rows))
    if model is not None:
        slots = [row.sequence.seq_id for row in drafting]
        lengths = [len(plan) for plan in plans]
        plans = model.propose(list(zip(slots, contexts, lengths, strict=True)))
    for row, drafted, candidate in zip(drafting, plans, candidates, strict=True):
        row.drafts, row.tokens = drafted, row.tokens + drafted
        if not drafted:  # a probe the draft model had nothing for is no probe
            candidate.speculation.probing = False
