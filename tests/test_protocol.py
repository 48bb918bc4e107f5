"""The wire protocol: round trips, and every kind of bad frame raises ProtocolError."""

from __future__ import annotations

import pytest

from xb.core import protocol as p

pytestmark = pytest.mark.unit

MESSAGES: list[p.Message] = [
    p.Ready(
        "w1",
        "host",
        42,
        p.Memory(8, 4, 2, 1),
        1,
        [p.ReplicaStatus("m-0", "m", "name", p.ModelState.READY, abilities=["chat"])],
    ),
    p.Heartbeat(p.Memory(8, 4), [], queue_depth=2, in_flight=1),
    p.Submit(
        "r1",
        "m",
        "chat",
        p.GenerateParams(messages=[p.ChatMessage("user", "hi")], stop=["x"], seed=3),
    ),
    p.Request("r1", "m-0", "completion", p.GenerateParams(prompt="hello", max_tokens=5)),
    p.Partial("r1", "text", 2),
    p.Final("r1", "length", p.Usage(3, 5, 8), "tail"),
    p.Error("r1", p.ErrorCode.QUEUE_FULL, "full"),
    p.Launch("m-0", p.ModelSpec("m", "name", "/x.gguf", 512)),
    p.Cancel("r1"),
    p.Ping("r"),
    p.Share(2),
    p.Queued("r1", 3),
    p.Submit("r2", "m", "chat", p.GenerateParams(messages=[]), positions=True),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: p.Message) -> None:
    frames = p.encode(message)
    assert len(frames) == 3 and frames[0] == p.VERSION
    assert p.decode(frames) == message


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"only one"],
        [p.VERSION, b"\x01"],
        [b"XB0", b"\x01", b"\x80"],
        [p.VERSION, b"\xee", b"\x80"],
        [p.VERSION, b"", b"\x80"],
        [p.VERSION, p.encode(p.Ping())[1], b"\xc1"],
        # A body of the wrong type for its command.
        [
            p.VERSION,
            p.encode(p.Ready("w", "h", 1, p.Memory(1, 1), 1))[1],
            p.encode(p.Cancel("x"))[2],
        ],
        [p.VERSION, p.encode(p.Partial("r", "t", 1))[1], b"\x93\xa1r\x01\xa1t"],
        [p.VERSION, p.encode(p.Ping())[1], b"\x81" + b"\xa1a" * 2, b"extra"],
        [p.VERSION, p.encode(p.Share(1))[1], b"\x81\xa7threads\x00"],  # zero threads
        # Place 0 in line: the first place is 1.
        [p.VERSION, p.encode(p.Queued("r", 1))[1], b"\x82\xaarequest_id\xa1r\xa8position\x00"],
    ],
)
def test_bad_frames_raise_protocol_error(frames: list[bytes]) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(frames)


def test_oversized_body_is_refused() -> None:
    frames = p.encode(p.Partial("r", "x" * (p.MAX_BODY_BYTES + 1), 1))
    with pytest.raises(p.ProtocolError, match="exceeds"):
        p.decode(frames)


def test_fields_from_newer_peers_are_ignored() -> None:
    import msgspec

    body = msgspec.msgpack.encode({"request_id": "r", "future_field": 1})
    assert p.decode([p.VERSION, p.encode(p.Cancel("r"))[1], body]) == p.Cancel("r")


def _ready(**fields: object) -> list[bytes]:
    """A READY whose body has ``fields`` as given, whatever their values."""
    import msgspec

    body = {
        "worker_id": "w",
        "host": "h",
        "pid": 1,
        "memory": {"total": 1, "free": 1},
        "slots": 1,
        **fields,
    }
    return [
        p.VERSION,
        p.encode(p.Ready("w", "h", 1, p.Memory(1, 1), 1))[1],
        msgspec.msgpack.encode(body),
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"memory": {"total": 2**61, "free": 2**61}},  # claims of an exabyte and more
        {"memory": {"total": 1, "free": -1}},
        {"slots": 10**9},
        {"worker_id": ""},
        {"worker_id": "w" * 1000},
        {
            "replicas": [
                {"replica_id": f"r{i}", "model_uid": "m", "model_name": "m", "state": "ready"}
                for i in range(p.MAX_REPLICAS_PER_WORKER + 1)
            ]
        },
        {
            "replicas": [
                {
                    "replica_id": "r",
                    "model_uid": "m",
                    "model_name": "m",
                    "state": "ready",
                    "slots": 0,
                }
            ]
        },
    ],
)
def test_what_a_worker_reports_is_bounded(fields: dict[str, object]) -> None:
    assert isinstance(p.decode(_ready()), p.Ready)
    with pytest.raises(p.ProtocolError):
        p.decode(_ready(**fields))
