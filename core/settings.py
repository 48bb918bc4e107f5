"""Defaults shared by every role, and the xb home folder."""

from __future__ import annotations

import os
from pathlib import Path

BROKER_PORT = 9998
API_PORT = 9997
DEFAULT_HOST = "127.0.0.1"
DEFAULT_ENDPOINT = f"http://{DEFAULT_HOST}:{API_PORT}"
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LIVENESS = 3  # intervals a peer may miss before it is dead
# Sequences a llama.cpp replica decodes together unless the launch says otherwise: on two
# cores four streams give 1.8x one stream's throughput, and four contexts of KV cache
# cost a 7B model about 1 GiB at n_ctx 2048 (README, "Serving many users").
DEFAULT_PARALLEL = 4


def xb_home() -> Path:
    """``$XB_HOME``, else ``~/.xb``: caches, models and state."""
    return Path(os.environ.get("XB_HOME") or Path.home() / ".xb")


# One default answer length everywhere: the chat and completions APIs, xb chat, xb generate
# and the dashboard's arena. None: an answer runs until the model ends it or its context
# (the n_ctx it was launched with) is full, as OpenAI's chat API and llama.cpp's server do.
DEFAULT_MAX_TOKENS: int | None = None
MAX_TOKENS_HELP = (
    "Tokens per answer at most. Default: no limit; the answer runs until the model ends it "
    "or its context is full (the same default as the API and the dashboard)."
)
