"""How long and how large a request may get in the facade, and what it is told past that.

- A whole (non-streamed) answer has a deadline, ``xb-broker --answer-timeout`` (600 s by
  default, the openai package's own timeout): past it the request is cancelled and the
  client gets a 504.
- A stream whose client leaves a write unread for ``--write-timeout`` seconds (30 by
  default) is cancelled; so is one that falls ``MAX_PENDING_FRAMES`` frames behind
  (``api.bridge``). What one stream holds in the facade is thus bounded.
- A request whose protocol frame would exceed ``xb.core.protocol.MAX_BODY_BYTES`` is a 413
  before anything is sent: the broker would drop it.
"""

from __future__ import annotations

from dataclasses import dataclass

from xb.api.errors import APIError
from xb.core import protocol as p

DEFAULT_ANSWER_TIMEOUT = 600.0
DEFAULT_WRITE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Limits:
    answer_timeout: float = DEFAULT_ANSWER_TIMEOUT
    write_timeout: float = DEFAULT_WRITE_TIMEOUT


def check_frame(message: p.Message) -> None:
    """A 413 if ``message`` would not fit in one protocol frame."""
    size = len(p.encode(message)[-1])
    if size > p.MAX_BODY_BYTES:
        raise APIError(
            413,
            f"the request takes {size} bytes as a protocol frame; at most "
            f"{p.MAX_BODY_BYTES} fit in one: send less text, or fewer inputs per request",
            code="request_too_large",
        )


def answer_timeout_error(seconds: float) -> APIError:
    return APIError(
        504,
        f"the answer was not done within {seconds:g} s (xb-broker --answer-timeout) and was "
        "cancelled; stream long answers, or ask for fewer max_tokens",
        type="server_error",
        code="timeout",
    )
