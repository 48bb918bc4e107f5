"""The request path's bookkeeping per tenant: quotas (``quotas.py``) and usage
(``usage.py``), fed by ``Requests`` at four points of a request's life (arrival, queueing,
dispatch, end) and written to the broker's state file on its periodic tick."""

from __future__ import annotations

import logging
import sqlite3

from xb.broker.cluster import Cluster
from xb.broker.quotas import Quotas
from xb.broker.usage import UsageBook
from xb.core import protocol as p
from xb.core.throttle import Throttle

log = logging.getLogger("xb.broker")


class Ledger:
    """``db``: the state file's connection; None keeps everything in memory."""

    def __init__(self, db: sqlite3.Connection | None = None) -> None:
        db = db if db is not None else sqlite3.connect(":memory:", check_same_thread=False)
        self.quotas = Quotas(db)
        self.usage = UsageBook(db)
        self._warn = Throttle(log, interval=60.0)

    def refusal(self, submit: p.Submit) -> tuple[str, int] | None:
        """Why ``submit`` is over a quota and when to retry (seconds); None if it is not.
        A refusal is logged once a minute per tenant, by name (never by key)."""
        refused = self.quotas.refusal(submit)
        if refused is not None:
            self._warn.warning(
                submit.tenant, "quota", "refused a request of model %r: %s", submit.model_uid,
                refused[0],
            )  # fmt: skip
        return refused

    def queued(self, submit: p.Submit) -> None:
        self.quotas.admitted(submit)
        self.usage.arrived(submit.request_id)

    def dispatched(self, submit: p.Submit) -> None:
        self.usage.dispatched(submit.request_id)

    def ended(self, submit: p.Submit, message: p.Final | p.Error) -> None:
        if isinstance(message, p.Final):
            self.usage.finished(submit, message)
            self.quotas.used(submit, message.usage)
        else:
            self.usage.ended(submit.request_id)

    def report(self, call: p.UsageCall, cluster: Cluster) -> p.UsageReport:
        self.quotas.flush()
        return self.usage.report(call, cluster)

    def flush(self) -> None:
        """Write what was counted since the last flush (the broker's tick, and its stop)."""
        self.quotas.flush()
        self.usage.flush()
