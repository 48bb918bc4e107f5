"""Which request gets a slot of the batch engine (``llama_engine``): the order requests wait
in, and which running sequence a waiting one may preempt.

Requests are ``interactive`` or ``batch``, and each has a tenant. Waiting interactive
requests join before any batch one. One that finds every slot busy while a batch sequence
runs preempts it, and a request whose tenant has nothing running preempts a sequence of a
tenant holding two slots or more (of no higher priority). The preempted sequence waits
ahead of the others of its priority, behind the one that preempted it.
"""

from __future__ import annotations

from collections import Counter, deque

from xb.worker.sequence import Sequence


def enqueue(waiting: deque[Sequence], sequence: Sequence, ahead: bool = False) -> None:
    """Interactive requests wait before batch ones; a preempted sequence (``ahead``) waits
    before the others of its priority, behind the one that preempted it (the head of the
    line)."""
    if ahead:
        first = ("interactive", "batch") if sequence.priority == "interactive" else ("batch",)
    elif sequence.priority == "batch":
        waiting.append(sequence)
        return
    else:
        first = ("batch",)
    at = next((i for i, s in enumerate(waiting) if s.priority in first), len(waiting))
    waiting.insert(max(at, 1) if ahead else at, sequence)


def victim(head: Sequence, running: list[Sequence]) -> Sequence | None:
    """The running sequence that leaves its slot for ``head``, if any may: a batch one when
    ``head`` is interactive; else, when ``head``'s tenant has nothing running, one of the
    tenant holding the most slots (two at least), of no higher priority than ``head``; of
    those, the one with the fewest cells (the cheapest to park). Sequences scoring a prompt
    and those with no cells yet are never moved."""
    movable = [s for s in running if s.echo is None and s.kv]
    batch = [s for s in movable if s.priority == "batch"]
    victims = batch if head.priority == "interactive" else []
    if not victims and all(s.tenant != head.tenant for s in running):
        lower = movable if head.priority == "interactive" else batch
        held = Counter(s.tenant for s in lower).most_common(1)
        if held and held[0][1] >= 2:
            victims = [s for s in lower if s.tenant == held[0][0]]
    return min(victims, key=lambda s: len(s.kv)) if victims else None
