"""Telling waiting requests where they stand in line (QUEUED), for the facades that ask
(``Submit.positions``: a stream shows the place as an SSE comment).

A request that has to wait is told its place at once; after that, on the broker's tick
(every heartbeat interval), only when its place changed and at most once a tick per
request, and never more than ``MAX_UPDATES`` messages a tick in all, the places nearest
the front first (the rest follow on the next ticks). A dispatch costs no message: a
queue of N requests costs one pass over the scheduler's order per tick, not N messages
each time a slot frees.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from xb.broker.cluster import Cluster
from xb.broker.outbox import Outbox
from xb.core import protocol as p

MAX_UPDATES = 1024  # QUEUED messages per tick, every model's together
MAX_TOLD = 65_536  # requests whose last told place is kept between ticks


@dataclass
class Positions:
    cluster: Cluster
    outbox: Outbox
    # The place each waiting request was last told, and when (monotonic seconds); the
    # tick keeps only those still waiting.
    told: dict[str, tuple[int, float]] = field(default_factory=dict)

    def admitted(self, client: bytes, submit: p.Submit, now: float) -> None:
        """``submit`` was just handled: if it waits and asks for its place, tell it."""
        if not submit.positions or submit.request_id in self.cluster.in_flight:
            return
        uid = submit.model_uid
        scheduler = self.cluster.scheduler
        if uid not in self.cluster.models or not scheduler.waiting(uid):
            return
        place = scheduler.position(uid, submit.request_id)
        if place is None:
            return  # refused: its error is on its way
        if len(self.told) < MAX_TOLD:
            self.told[submit.request_id] = (place, now)
        # Past the bound it is told again on the next tick, which costs one more message.
        self.outbox.send(client, p.Queued(submit.request_id, place))

    def tick(self, now: float, interval: float) -> None:
        """Tell the waiting requests whose place changed and that were last told at least
        ``interval`` seconds ago."""
        scheduler = self.cluster.scheduler
        told, kept = self.told, {}
        changed: list[tuple[int, str, bytes]] = []
        for uid in self.cluster.models:
            if not scheduler.waiting(uid):
                continue
            for place, entry in enumerate(scheduler.order(uid), 1):
                submit = entry.submit
                if not submit.positions:
                    continue
                rid = submit.request_id
                last = told.get(rid)
                if last is not None:
                    kept[rid] = last
                if last is None or (last[0] != place and now - last[1] >= interval):
                    changed.append((place, rid, entry.client))
        for place, rid, client in heapq.nsmallest(MAX_UPDATES, changed):
            kept[rid] = (place, now)
            self.outbox.send(client, p.Queued(rid, place))
        self.told = kept
