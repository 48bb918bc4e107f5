"""10,000 malformed frames from allowed peers while users chat: the broker counts and drops
them, keeps serving, keeps its memory and does not flood its log."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import zmq

from tests.chaos.traffic import broker_counters, metrics, mib, rss
from tests.stack import Stack, wait_until
from xb.core import protocol as p

pytestmark = pytest.mark.chaos

FRAMES = 10_000
COMMANDS = [bytes([i + 1]) for i in range(len(p._TYPES))]  # every command this protocol knows
# What only the broker sends: from a facade each is a frame the broker cannot act upon.
BROKER_ONLY = [
    p.Request("r", "x-0", "chat", p.GenerateParams()),
    p.Launch("x-0", p.ModelSpec("x", "x")),
    p.Terminate("x-0"),
    p.Pong("r"),
    p.ModelInfo("r", "x", "x", None, "gguf", "LLM", 1, [], 1, [], 0),
    p.ModelList("r", []),
    p.Cluster("r", []),
    p.Ack("r"),
    p.Share(2),  # a worker's to its model processes
]


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point this process's stderr at ``path`` while a child that inherits it starts
    (Stack starts its broker with the test's own stderr)."""
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def undecodable(rng: random.Random) -> tuple[str, list[bytes]]:
    """A frame list ``protocol.decode`` refuses, of one of several shapes (a random one
    that happens to be a valid message, such as a PING, is drawn again)."""
    while True:
        shape, frames = garbage(rng)
        try:
            p.decode(frames)
        except p.ProtocolError:
            return shape, frames


def garbage(rng: random.Random) -> tuple[str, list[bytes]]:
    junk = rng.randbytes(rng.randint(0, 64))
    shape = rng.randrange(7)
    if shape == 0:
        count = rng.choice([1, 2, 4, 5, 9])
        return "wrong frame count", [rng.randbytes(rng.randint(0, 16)) for _ in range(count)]
    if shape == 1:
        version = rng.choice([b"", b"XB0", b"XB2", b"xb1", rng.randbytes(3), b"XB1" * 100])
        return "wrong version", [version, rng.choice(COMMANDS), junk]
    if shape == 2:
        command = rng.choice([b"", b"\x00", bytes([rng.randint(25, 255)]), b"\x01\x01", junk])
        return "unknown command", [p.VERSION, command, junk]
    if shape == 3:
        # Bodies start with a fixmap/map16 marker or a type no struct has, then junk.
        body = rng.choice([b"\xc1", b"\x85", b"\xde\x00\x09", b"\x93\x01", b""]) + junk
        return "bad msgpack", [p.VERSION, rng.choice(COMMANDS), body]
    if shape == 4:
        value: Any = rng.choice(
            [
                {"request_id": 5, "model_uid": ["x"], "kind": "dance", "params": None},
                {"worker_id": "w", "host": "h", "pid": "pid", "memory": {}, "slots": 1.5},
                {"replica_id": "x", "spec": {"model_uid": 1}},
                [1, 2, 3],
                -(2**63),
                "a string",
                None,
                {"request_id": "r", "replica": 2**64 - 1},
            ]
        )
        return "wrong types", [p.VERSION, rng.choice(COMMANDS), msgspec.msgpack.encode(value)]
    if shape == 5:
        # Headers that claim gigabytes the body does not have.
        claim = rng.choice(
            [
                b"\xdd\xff\xff\xff\xff",  # array32
                b"\xdf\xff\xff\xff\xff",  # map32
                b"\xdb\xff\xff\xff\xff",  # str32
                b"\xc6\xff\xff\xff\xff",  # bin32
                b"\xc9\xff\xff\xff\xff\x01",  # ext32
                b"\x84\xaarequest_id\xa1r\xa8messages\xdd\x7f\xff\xff\xff",
            ]
        )
        return "oversized claims", [p.VERSION, rng.choice(COMMANDS), claim + junk]
    return "truncated body", [p.VERSION, b"\x0c", p.encode(submit(rng))[2][: rng.randint(1, 20)]]


def submit(rng: random.Random) -> p.Submit:
    return p.Submit(f"s{rng.random()}", "ghost", "chat", p.GenerateParams(max_tokens=1))


def bad_ready(rng: random.Random, index: int) -> tuple[str, list[bytes]]:
    """A READY no real worker sends: a replica list past the protocol's bound, or negative
    numbers."""
    if index % 2:
        statuses = [
            p.ReplicaStatus(f"ghost-{i}", "ghost", "ghost", p.ModelState.READY) for i in range(5000)
        ]
        ready = p.Ready(f"fuzz-{index}", "h", 1, p.Memory(2**40, 2**40), 1, statuses)
        return "READY with 5000 replicas", p.encode(ready)
    status = p.ReplicaStatus("ghost-0", "ghost", "ghost", p.ModelState.READY, in_flight=-7)
    pid = -rng.randint(1, 2**31)
    ready = p.Ready(f"fuzz-{index}", "h", pid, p.Memory(-1, -(2**40)), -4, [status])
    return "READY with negative numbers", p.encode(ready)


def mixture(rng: random.Random, index: int) -> tuple[str, list[bytes], bool]:
    """The ``index``th bad frame list, and whether a worker's peer sends it (READYs)."""
    if index % 500 == 250:
        return (*bad_ready(rng, index // 500), True)
    if index % 50 == 25:
        message = BROKER_ONLY[index // 50 % len(BROKER_ONLY)]
        return "broker-only command", p.encode(message), False
    return (*undecodable(rng), False)


def drain(sock: zmq.Socket[bytes]) -> int:
    got = 0
    while sock.poll(0):
        sock.recv_multipart()
        got += 1
    return got


def settle(sock: zmq.Socket[bytes], tag: str) -> p.BrokerStats:
    """Ping through ``sock`` and wait for the pong: the broker has read all it was sent
    before; its counters as of then."""
    sock.send_multipart(p.encode(p.Ping(tag)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sock.poll(1000):
            message = p.decode(sock.recv_multipart())
            if isinstance(message, p.Pong) and message.request_id == tag:
                assert message.stats is not None
                return message.stats
    raise AssertionError("the broker did not answer a ping after the malformed frames")


def chat(stack: Stack, text: str) -> int:
    """The status of a short chat with the tiny model (0: no response)."""
    body = {"model": "tiny", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    try:
        return httpx.post(stack.url + "/v1/chat/completions", json=body, timeout=30).status_code
    except httpx.HTTPError:
        return 0


def log_lines(log: Path) -> int:
    return log.read_bytes().count(b"\n")


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, tiny_model: Path
) -> Iterator[tuple[Stack, Path]]:
    """A broker whose log goes to a file, a worker, the tiny model; and the broker's log."""
    home = tmp_path_factory.mktemp("xbhome")
    log = home / "broker.stderr"
    stack = Stack(home=home, model_dirs=[models_dir])
    try:
        with stderr_to(log):
            stack.start()
        stack.add_worker()
        stack.launch(model_name="tiny", model_path=str(tiny_model))
        yield stack, log
    finally:
        stack.stop()


def test_ten_thousand_malformed_frames_between_chats(
    fuzzed: tuple[Stack, Path], figures: Callable[[str], None]
) -> None:
    stack, log = fuzzed
    assert stack.broker is not None
    ctx = zmq.Context()
    rng = random.Random(9)
    facade, worker = stack.peer(ctx), stack.peer(ctx)
    try:
        # Warm up: what the broker allocates once (code paths, caches) is not a leak.
        assert [chat(stack, f"warm-up {i}") for i in range(20)] == [200] * 20
        for i in range(1000):
            shape, frames, as_worker = mixture(rng, i)
            (worker if as_worker else facade).send_multipart(frames)
            drain(facade)
            drain(worker)
        before = settle(facade, "warm")
        rss_before = rss(stack.broker_loop_pid())
        lines_before = log_lines(log)

        stop = threading.Event()
        chats_during: list[int] = []

        def keep_chatting() -> None:
            while not stop.is_set():
                chats_during.append(chat(stack, f"during {len(chats_during)}"))
                stop.wait(0.05)

        shapes: Counter[str] = Counter()
        replies = 0
        started = time.monotonic()
        chatter = threading.Thread(target=keep_chatting, daemon=True)
        chatter.start()
        try:
            for i in range(FRAMES):
                shape, frames, as_worker = mixture(rng, i)
                (worker if as_worker else facade).send_multipart(frames)
                shapes[shape] += 1
                replies += drain(facade) + drain(worker)
                if i % 100 == 99:
                    time.sleep(0.02)  # in batches, so that chats come in between
            after = settle(facade, "flood")
            replies += drain(worker)
        finally:
            stop.set()
            chatter.join(35)
        flood = time.monotonic() - started
        assert [chat(stack, f"after {i}") for i in range(5)] == [200] * 5
        assert stack.broker.poll() is None
        rss_after = rss(stack.broker_loop_pid())
        lines = log_lines(log) - lines_before
    finally:
        ctx.destroy(linger=0)  # closes the peers' sockets too

    malformed = after.malformed - before.malformed
    bad_readies = sum(n for s, n in shapes.items() if s.startswith("READY"))
    broker_only = shapes["broker-only command"]
    undecoded = FRAMES - broker_only - bad_readies
    change = (rss_after - rss_before) / rss_before
    figures(f"{FRAMES} frames from 2 allowed peers in {flood:.1f} s, {replies} replies")
    for shape, count in shapes.most_common():
        figures(f"  {count} x {shape}")
    figures(f"malformed frames counted: {malformed}")
    figures(f"chats meanwhile: {dict(Counter(chats_during))} by status, then 5 more")
    figures(f"broker RSS {mib(rss_before)} -> {mib(rss_after)} ({change:+.1%})")
    figures(f"broker log: {lines} lines during the flood")

    assert chats_during and set(chats_during) == {200}, Counter(chats_during)
    assert malformed >= undecoded + broker_only + bad_readies
    # /metrics shows the count too (the facade reads it from the broker every second).
    expected = after.malformed
    wait_until(lambda: metrics(stack)["xb_broker_malformed_frames_total"] >= expected, timeout=5)
    figures(f"broker counters: {broker_counters(stack)}")
    # A frame the broker could read is handled without an exception of its own.
    assert after.handler_errors == 0
    assert metrics(stack)["xb_broker_handler_errors_total"] == 0
    assert not [w["worker_id"] for w in stack.cluster() if w["worker_id"].startswith("fuzz")]
    assert abs(change) <= 0.10
    # Warnings are rate-limited: a line per peer and kind of trouble now and then.
    assert lines <= 50, log.read_text()[-3000:]


def test_frames_past_the_size_bound_leave_memory_bounded(
    fuzzed: tuple[Stack, Path], figures: Callable[[str], None]
) -> None:
    """Bodies just past MAX_BODY_BYTES (under the socket's own limit) reach the broker's
    loop and are dropped; the allocator may keep a few such buffers, never all of them."""
    stack, _ = fuzzed
    assert stack.broker is not None
    ctx = zmq.Context()
    rng = random.Random(11)
    facade = stack.peer(ctx)
    big = [p.VERSION, b"\x0c", b"\x91" + rng.randbytes(p.MAX_BODY_BYTES)]
    sizes = []
    try:
        first = settle(facade, "start").malformed
        sizes.append(rss(stack.broker_loop_pid()))
        for batch in range(4):
            for _ in range(12):
                facade.send_multipart(big)
            last = settle(facade, f"batch {batch}").malformed
            sizes.append(rss(stack.broker_loop_pid()))
        assert chat(stack, "after big frames") == 200
    finally:
        ctx.destroy(linger=0)
    sent = 48 * len(big[2])
    figures(
        f"48 bodies of 8 MiB + 1 byte ({mib(sent)}): broker RSS "
        + " -> ".join(mib(size) for size in sizes)
    )
    assert last - first == 48
    assert sizes[-1] - sizes[0] <= 6 * len(big[2])  # a leak would keep them all
