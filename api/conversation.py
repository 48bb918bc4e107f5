"""Names for conversations, so the broker can send a follow-up where its prefix is cached.

A chat's messages are hashed as a chain: key k covers messages 0..k-1. A request's own
key covers all its messages; its prefix keys cover the shorter runs, longest first. A
follow-up (the earlier messages, the answer, a new question) finds its conversation
among its prefix keys. Only the facade reads message text; the broker compares keys.
"""

from __future__ import annotations

import hashlib

from xb.core import protocol as p

PREFIX_KEYS = 8  # the broker looks no further back than this many prefixes


def conversation_keys(model: str, messages: list[p.ChatMessage]) -> tuple[list[str], str]:
    """(prefix keys, longest first; this conversation's key), for chats with ``model``."""
    chain: list[str] = []
    digest = hashlib.blake2b(model.encode(), digest_size=16).digest()
    for message in messages:
        h = hashlib.blake2b(digest, digest_size=16)
        h.update(message.role.encode())
        h.update(b"\0")
        h.update(message.content.encode(errors="surrogatepass"))
        digest = h.digest()
        chain.append(digest.hex())
    if not chain:
        return [], ""
    return chain[-2::-1][:PREFIX_KEYS], chain[-1]
