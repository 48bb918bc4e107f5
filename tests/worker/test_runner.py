"""The model process's runner: what it sends to its worker."""

from __future__ import annotations

from typing import Any

import pytest

from xb.core import protocol as p
from xb.worker.model_process import Runner

pytestmark = pytest.mark.unit


class Socket:
    def __init__(self) -> None:
        self.sent: list[p.Message] = []

    def send_multipart(self, frames: list[bytes]) -> None:
        assert len(frames[-1]) <= p.MAX_BODY_BYTES
        self.sent.append(p.decode(frames))


class Engine:
    cached_tokens = 0

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.shares: list[int] = []

    def share(self, threads: int) -> None:
        self.shares.append(threads)

    def cancel(self, request_id: str) -> bool:
        self.cancelled.append(request_id)
        return True


def test_a_result_too_big_for_one_frame_ends_its_request_with_the_reason() -> None:
    sock = Socket()
    engine = Engine()
    runner = Runner(sock, engine, lambda: None)  # type: ignore[arg-type]
    # 16,000 inputs of 64 dimensions: about 9 MiB as a frame.
    vectors: Any = [[0.123456789] * 64] * 16_000
    runner._send(p.Final("big", "stop", p.Usage(16_000, 0, 16_000), embeddings=vectors))
    runner._send(p.Final("small", "stop", p.Usage(1, 0, 1), embeddings=[[0.5] * 64]))
    big, small = sock.sent
    assert isinstance(big, p.Error) and big.request_id == "big"
    assert big.code == p.ErrorCode.INVALID_REQUEST and "fewer inputs" in big.message
    assert isinstance(small, p.Final) and small.embeddings == [[0.5] * 64]
    assert engine.cancelled == ["big"]


def test_a_share_from_the_worker_reaches_the_engine() -> None:
    engine = Engine()
    runner = Runner(Socket(), engine, lambda: None)  # type: ignore[arg-type]
    runner._handle(p.encode(p.Share(3)))
    assert engine.shares == [3]
