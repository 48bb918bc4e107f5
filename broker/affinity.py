"""Conversation affinity: which replica served a conversation, so its follow-up goes there.

A replica keeps a finished conversation's KV cells (its prefix cache); a follow-up sent to
the same replica reads only its new messages. The facade names each chat by a chain of
hashes over its messages; the broker remembers the last replica of each, in a bounded
table that forgets the least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict

MAX_CONVERSATIONS = 65536
MAX_KEYS = 8  # prefixes of a request looked up, longest first


class Affinity:
    def __init__(self, limit: int = MAX_CONVERSATIONS) -> None:
        self._limit = limit
        self._served: OrderedDict[str, str] = OrderedDict()  # conversation -> replica id

    def __len__(self) -> int:
        return len(self._served)

    def remember(self, conversation: str, replica_id: str) -> None:
        if not conversation:
            return
        self._served[conversation] = replica_id
        self._served.move_to_end(conversation)
        if len(self._served) > self._limit:
            self._served.popitem(last=False)

    def lookup(self, prefix_keys: list[str]) -> str | None:
        """The replica that served the longest earlier part of this conversation."""
        for key in prefix_keys[:MAX_KEYS]:
            replica_id = self._served.get(key)
            if replica_id is not None:
                return replica_id
        return None

    def forget(self, replica_ids: set[str]) -> None:
        """Drop the conversations of replicas that are gone."""
        for key in [k for k, r in self._served.items() if r in replica_ids]:
            del self._served[key]
