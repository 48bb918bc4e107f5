"""One sequence of the batch engine (``llama_engine``), and the rows it feeds a step:
its next token and any draft (``speculative``), or a chunk of its prompt."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from xb.core.protocol import Priority, Usage
from xb.worker.answer import Answer
from xb.worker.draft_model import DraftModel
from xb.worker.llama_echo import Echo
from xb.worker.llama_sampling import Sampler
from xb.worker.parking import CellBytes
from xb.worker.speculative import Candidate, Drafter, Speculation


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
    proposals, or the draft model's (``model``)."""
    drafting = [r for r in rows if r.sample and r.sequence.speculation is not None]
    if not drafting:
        return
    budget = n_batch - len(rows)
    contexts, rooms, speculations = [], [], []
    for row in drafting:
        sequence = row.sequence
        assert sequence.speculation is not None and sequence.next_token is not None
        contexts.append([*sequence.kv, sequence.next_token])
        rooms.append(sequence.limit - sequence.produced)
        speculations.append(sequence.speculation)
    if model is None:
        k = drafter.draft_tokens
        pairs = zip(speculations, contexts, strict=True)
        proposals = [s.ngrams.propose(context, k) for s, context in pairs]
    else:
        lengths = _worth_drafting(speculations, rooms, drafter, len(rows), budget)
        slots = [row.sequence.seq_id for row in drafting]
        proposals = model.propose(list(zip(slots, contexts, lengths, strict=True)))
    candidates = [Candidate(*c) for c in zip(speculations, proposals, rooms, strict=True)]
    plans = drafter.plan(candidates, len(rows), budget)
    for row, drafted in zip(drafting, plans, strict=True):
        row.drafts, row.tokens = drafted, row.tokens + drafted


def _worth_drafting(
    speculations: list[Speculation], rooms: list[int], drafter: Drafter, rows: int, budget: int
) -> list[int]:
    """The longest draft each sequence could be given this step, were its draft model's
    proposal as long as allowed: running the draft model for a sequence whose draft would
    not pay is wasted. The plan is made on copies, so that it leaves the sequences' rates
    alone; one that gets nothing rests (``Speculation.rest``), to try again later."""
    full = [0] * drafter.draft_tokens
    pairs = zip(speculations, rooms, strict=True)
    copies = [Candidate(copy.copy(s), full, room) for s, room in pairs]
    plans = drafter.plan(copies, rows, budget)
    for speculation, plan in zip(speculations, plans, strict=True):
        if not plan:
            speculation.rest()
    return [len(plan) for plan in plans]
