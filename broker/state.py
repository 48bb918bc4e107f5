"""The broker's desired state on disk: the models users launched, with their replica counts
and launch settings, and which key each worker id belongs to.

A restarted broker reads it back and puts the cluster together again: replicas that
workers still run are taken back, missing ones are placed anew (``heal.py``). It is one
SQLite file under ``XB_HOME``; only the broker's thread writes to it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import msgspec

from xb.broker.table import Model
from xb.core import protocol as p

log = logging.getLogger("xb.broker")

STATE_FILE = "broker.db"
# Terminated models whose next replica index is kept, so a model launched again under
# the same uid never reuses a replica id (a worker returning with an old replica could
# otherwise pass for a new one); the oldest are forgotten beyond this many.
MAX_RETIRED = 65_536


class SavedModel(msgspec.Struct, frozen=True):
    """What a launch asked for, as it stands after later scaling."""

    spec: p.ModelSpec
    wanted: int = msgspec.field(name="replica")  # names as saved by earlier versions
    created: int
    need: int = 0
    pinned_worker: str | None = msgspec.field(default=None, name="worker")
    request_limits: int | None = None
    abilities: list[str] = []
    next_index: int = 0  # replica ids are never used twice, even across restarts
    first_index: int = 0  # ids below it were an earlier model's of the same uid
    ran: bool = True  # a replica was ready once (a failed first launch is not retried)


# What is saved of a model: the fields of SavedModel, each a Model field of that name.
_SAVED = SavedModel.__struct_fields__
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SavedModel)


class DesiredState:
    """``path`` None keeps nothing across restarts (a broker embedded in a benchmark)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        # Made in the caller's thread, used in the broker's: one user at a time.
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:", check_same_thread=False
        )
        with self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS models (uid TEXT PRIMARY KEY, body BLOB)")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS bindings (worker_id TEXT PRIMARY KEY, key TEXT)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS retired (uid TEXT PRIMARY KEY, next_index INTEGER)"
            )

    @property
    def db(self) -> sqlite3.Connection:
        """The state file's connection, for what else the broker keeps there (quotas and
        usage: ``ledger.py``); the broker's thread is its one user."""
        return self._db

    def models(self) -> list[Model]:
        """The models saved, as launched and scaled, without replicas."""
        models = []
        for uid, body in self._db.execute("SELECT uid, body FROM models ORDER BY rowid"):
            try:
                saved = _decoder.decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("saved model %r is unreadable and was skipped: %s", uid, exc)
                continue
            models.append(Model(**{name: getattr(saved, name) for name in _SAVED}))
        return models

    def save(self, model: Model) -> None:
        saved = SavedModel(**{name: getattr(model, name) for name in _SAVED})
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO models (uid, body) VALUES (?, ?)",
                (model.uid, _encoder.encode(saved)),
            )

    def forget(self, uid: str, next_index: int) -> None:
        """The model is terminated; its next replica index is kept for a relaunch."""
        with self._db:
            self._db.execute("DELETE FROM models WHERE uid = ?", (uid,))
            self._db.execute("DELETE FROM retired WHERE uid = ?", (uid,))
            self._db.execute(
                "INSERT INTO retired (uid, next_index) VALUES (?, ?)", (uid, next_index)
            )
            self._db.execute(
                "DELETE FROM retired WHERE rowid <= (SELECT MAX(rowid) FROM retired) - ?",
                (MAX_RETIRED,),
            )

    def next_index(self, uid: str) -> int:
        """Where a launch of ``uid`` numbers its replicas from: after those of any
        earlier model of that uid."""
        row = self._db.execute("SELECT next_index FROM retired WHERE uid = ?", (uid,)).fetchone()
        return int(row[0]) if row else 0

    def bindings(self) -> list[tuple[str, str]]:
        return list(self._db.execute("SELECT worker_id, key FROM bindings ORDER BY rowid"))

    def bind(self, worker_id: str, key: str) -> None:
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO bindings (worker_id, key) VALUES (?, ?)", (worker_id, key)
            )

    def unbind(self, worker_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM bindings WHERE worker_id = ?", (worker_id,))

    def close(self) -> None:
        self._db.close()
