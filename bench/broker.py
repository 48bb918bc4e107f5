"""The broker at scale: routed requests per second, forwarded PARTIAL frames per second,
sequential round trip beside ``zmq.proxy``, and the broker's CPU and memory with 10, 100
and 1,000 idle workers; with CURVE (the default) and with plain sockets (``--insecure``).

Every peer is a process of its own (bench/synthetic.py) on real loopback sockets, speaking
the real protocol to the real broker, which runs alone in its process. Workers answer at
once; each facade keeps --depth requests in flight. The round trip is one request at a
time from this process, in alternating blocks: straight to an echo peer (no middle),
through libzmq's C proxy, and through the broker; "added" is a path's round trip less the
straight one. The echo peer does what a synthetic worker does (reads the request id,
answers with a FINAL). Measurements
are interleaved in --rounds rounds and the medians reported, with the spread across rounds.
Run: .venv/bin/python -m bench.broker [--rounds 5] [--profile PREFIX]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
import zmq

from bench import synthetic
from tests.stack import free_port
from xb.core import protocol as p
from xb.core.keys import KeyPair, PeerKeys, broker_keys, peer_keys
from xb.core.transport import configure_peer

_mp = multiprocessing.get_context("spawn")
IDLE_PER_PROCESS = 250  # synthetic workers one idle host process holds


@dataclass
class Security:
    """The keys of one mode: CURVE (peers and server keys) or plain (both None)."""

    name: str
    home: Path | None
    peers: PeerKeys | None
    server: KeyPair | None

    @classmethod
    def make(cls, secure: bool, folder: Path) -> Security:
        if not secure:
            return cls("plain", None, None, None)
        home = folder / "home"
        server = broker_keys(home)  # allows this home's peer key, as xb-broker does
        return cls("CURVE", home, peer_keys(home), server)


@dataclass
class Processes:
    """Processes started for one measurement, all stopped when it ends."""

    items: list[Any] = field(default_factory=list)
    stop: Any = field(default_factory=_mp.Event)

    def start(self, target: Callable[..., None], *args: Any) -> Any:
        process = _mp.Process(target=target, args=args, daemon=True)
        process.start()
        self.items.append(process)
        return process

    def close(self) -> None:
        self.stop.set()
        for process in self.items:
            process.join(3)
            if process.is_alive():
                process.terminate()
                process.join(3)


@contextlib.contextmanager
def running() -> Iterator[Processes]:
    processes = Processes()
    try:
        yield processes
    finally:
        processes.close()


def start_broker(processes: Processes, security: Security, spec: str) -> tuple[str, psutil.Process]:
    address = f"tcp://127.0.0.1:{free_port()}"
    ours, theirs = _mp.Pipe()
    home = str(security.home) if security.home else None
    processes.start(synthetic.broker, address, home, spec, theirs)
    return address, psutil.Process(ours.recv())


def control(address: str, security: Security) -> tuple[zmq.Context[Any], zmq.Socket[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    configure_peer(sock, security.peers)
    sock.connect(address)
    return ctx, sock


def workers_known(sock: zmq.Socket[Any]) -> int:
    sock.send_multipart(p.encode(p.ClusterInfo("count", limit=1)))  # one page: the total
    while sock.poll(5000):
        message = p.decode(sock.recv_multipart())
        if isinstance(message, p.Cluster):
            return message.total
    raise RuntimeError("the broker did not answer CLUSTER_INFO within 5 s")


def wait_workers(sock: zmq.Socket[Any], count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while (known := workers_known(sock)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{known} of {count} synthetic workers joined in {timeout} s")
        time.sleep(0.2)


def round_trips(sock: zmq.Socket[Any], count: int) -> list[float]:
    """Seconds each of ``count`` sequential SUBMIT -> FINAL round trips on ``sock`` took."""
    params = p.GenerateParams(messages=[p.ChatMessage("user", "hi")], max_tokens=0)
    times = []
    for i in range(count):
        frames = p.encode(p.Submit(f"rt-{i}", synthetic.MODEL, "chat", params))
        start = time.perf_counter()
        sock.send_multipart(frames)
        if not sock.poll(5000):
            raise RuntimeError("no answer within 5 s")
        reply = sock.recv_multipart()
        times.append(time.perf_counter() - start)
        if reply[-2] != synthetic.FINAL:
            raise RuntimeError(f"expected FINAL, got {p.decode(reply[-3:])!r}")
    return times


def paired_trips(socks: list[zmq.Socket[Any]], count: int, block: int = 50) -> list[float]:
    """Median round trip on each of ``socks``, taken in alternating blocks of ``block``
    trips, so that a busy neighbour slows every path alike."""
    times: list[list[float]] = [[] for _ in socks]
    for sock in socks:
        round_trips(sock, block)  # warm up
    for _ in range(max(count // block, 1)):
        for sock, kept in zip(socks, times, strict=True):
            kept += round_trips(sock, block)
    return [statistics.median(kept) for kept in times]


def cpu_seconds(process: psutil.Process) -> tuple[float, float]:
    """CPU seconds of the whole broker process, and of its loop (its main thread); the
    rest is libzmq's I/O thread (CURVE's encryption is done there) and the ZAP thread."""
    threads = {t.id: t.user_time + t.system_time for t in process.threads()}
    times = process.cpu_times()
    return times.user + times.system, threads.get(process.pid, 0.0)


@contextlib.contextmanager
def cpu_share(process: psutil.Process, out: list[float]) -> Iterator[None]:
    """Appends to ``out`` the % of one core the broker, then its loop, used meanwhile."""
    before, start = cpu_seconds(process), time.monotonic()
    yield
    after, elapsed = cpu_seconds(process), time.monotonic() - start
    out += [(after[i] - before[i]) / elapsed * 100 for i in (0, 1)]


# ---- measurements -----------------------------------------------------------------------


@dataclass
class Busy:
    """One load measurement on a busy broker."""

    requests: float  # routed requests/s with no PARTIAL frames
    partials: float  # PARTIAL frames/s forwarded with --tokens per request
    partial_requests: float
    cpu_requests: list[float]  # broker CPU, % of one core, during each load: all, loop
    cpu_partials: list[float]
    errors: int
    trips: list[float]  # sequential round trip, seconds: straight, zmq.proxy, broker


def busy(security: Security, spec: str, args: argparse.Namespace, profile: str | None) -> Busy:
    with running() as processes:
        address, broker = start_broker(processes, security, spec)
        for w in range(args.workers):
            processes.start(
                synthetic.worker, address, security.peers, f"w{w}", args.slots, processes.stop
            )
        conns: list[Connection] = []
        for _ in range(args.facades):
            ours, theirs = _mp.Pipe()
            processes.start(synthetic.facade, address, security.peers, theirs)
            conns.append(ours)
        ctx, sock = control(address, security)
        try:
            wait_workers(sock, args.workers)

            def load(
                tokens: int, profile: str | None = None
            ) -> tuple[float, float, list[float], int]:
                for conn in conns:
                    conn.send((args.depth, tokens, args.warmup, args.seconds))
                time.sleep(args.warmup)
                spy = None
                if profile:
                    pid, duration = str(broker.pid), str(int(args.seconds))
                    record = ["record", "--pid", pid, "--rate", "250", "--nonblocking"]
                    output = ["--duration", duration, "--format", "raw", "-o", profile]
                    spy = subprocess.Popen(
                        [args.py_spy, *record, *output], stdout=subprocess.DEVNULL
                    )
                cpu: list[float] = []
                with cpu_share(broker, cpu):
                    time.sleep(args.seconds)
                results = [conn.recv() for conn in conns]
                if spy is not None:
                    spy.wait(60)
                finals = sum(r[0] / r[3] for r in results)
                partials = sum(r[1] / r[3] for r in results)
                return finals, partials, cpu, sum(r[2] for r in results)

            name = f"{security.name.lower()}-{spec.rsplit(':', 1)[-1]}"
            requests, _, cpu_r, errors_r = load(0, profile and f"{profile}-{name}-requests.txt")
            finals, partials, cpu_p, errors_p = load(
                args.tokens, profile and f"{profile}-{name}-partials.txt"
            )
            trips = baseline_and(processes, security, sock, args.trips)
        finally:
            sock.close(linger=0)
            ctx.term()
        for conn in conns:
            conn.send(None)
    return Busy(requests, partials, finals, cpu_r, cpu_p, errors_r + errors_p, trips)


def baseline_and(
    processes: Processes, security: Security, broker: zmq.Socket[Any], count: int
) -> list[float]:
    """Round trips straight to an echo peer, through zmq.proxy, and on ``broker``."""
    direct, front, back = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    processes.start(synthetic.echo_direct, direct, security.server, processes.stop)
    processes.start(synthetic.proxy, front, back, security.server)
    processes.start(synthetic.echo_behind, back, security.peers, processes.stop)
    contexts = [control(address, security) for address in (direct, front)]
    try:
        return paired_trips([contexts[0][1], contexts[1][1], broker], count)
    finally:
        for ctx, sock in contexts:
            sock.close(linger=0)
            ctx.term()


def idle(security: Security, spec: str, count: int, seconds: float) -> tuple[list[float], int]:
    """(broker CPU as % of one core: all, loop; RSS bytes) with ``count`` idle workers."""
    with running() as processes:
        address, broker = start_broker(processes, security, spec)
        ids = [f"idle{i}" for i in range(count)]
        for i in range(0, count, IDLE_PER_PROCESS):
            chunk = ids[i : i + IDLE_PER_PROCESS]
            processes.start(synthetic.idle_host, address, security.peers, chunk, processes.stop)
        ctx, sock = control(address, security)
        try:
            wait_workers(sock, count)
        finally:
            sock.close(linger=0)
            ctx.term()
        time.sleep(2)  # joins and handshakes are over; what is left is the steady state
        cpu: list[float] = []
        with cpu_share(broker, cpu):
            time.sleep(seconds)
        rss = broker.memory_info().rss
        ctx, sock = control(address, security)
        try:  # none was dropped for silence meanwhile (which would have cost rejoins)
            if (known := workers_known(sock)) != count:
                raise RuntimeError(f"{count - known} idle workers were dropped")
        finally:
            sock.close(linger=0)
            ctx.term()
        return cpu, rss


# ---- report -----------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return f" ({min(values):,.0f}-{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="busy synthetic workers")
    parser.add_argument("--facades", type=int, default=2)
    parser.add_argument("--depth", type=int, default=64, help="requests in flight per facade")
    parser.add_argument("--slots", type=int, default=256, help="slots per busy worker")
    parser.add_argument("--tokens", type=int, default=32, help="PARTIAL frames per request")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="each load's window")
    parser.add_argument("--trips", type=int, default=2000, help="sequential round trips")
    parser.add_argument("--idle", default="10,100,1000", help="idle worker counts")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--modes", default="curve,plain")
    parser.add_argument(
        "--profile", help="sample the broker with py-spy in round 1; raw stacks go to PROFILE-*"
    )
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy command")
    parser.add_argument(
        "--broker",
        default="xb.broker.server:Broker",
        help="broker classes to measure side by side, module:Class, comma-separated "
        "(a prototype beside the real one, say)",
    )
    args = parser.parse_args()
    synthetic.raise_fd_limit()
    counts = [int(n) for n in args.idle.split(",") if n]

    with tempfile.TemporaryDirectory() as tmp:
        modes = [Security.make(m == "curve", Path(tmp)) for m in args.modes.split(",")]
        specs = args.broker.split(",")
        variants = [(mode, spec) for mode in modes for spec in specs]
        loads: dict[tuple[str, str], list[Busy]] = {(m.name, s): [] for m, s in variants}
        idles: dict[tuple[str, str, int], list[tuple[list[float], int]]] = {}
        for r in range(args.rounds):  # interleaved, so drift and neighbours hit every side
            for mode in modes:
                for spec in specs:
                    profile = args.profile if r == 0 else None
                    loads[(mode.name, spec)].append(busy(mode, spec, args, profile))
                    for count in counts:
                        idles.setdefault((mode.name, spec, count), []).append(
                            idle(mode, spec, count, args.idle_seconds)
                        )
            print(f"round {r + 1}/{args.rounds} done", flush=True)

    report(args, variants, loads, idles, counts)


def report(
    args: argparse.Namespace,
    variants: list[tuple[Security, str]],
    loads: dict[tuple[str, str], list[Busy]],
    idles: dict[tuple[str, str, int], list[tuple[list[float], int]]],
    counts: list[int],
) -> None:
    several = len({spec for _, spec in variants}) > 1
    print(
        f"\n{args.facades} facades x {args.depth} in flight, {args.workers} workers, "
        f"{args.tokens} PARTIAL frames per request in the frames test; medians of "
        f"{args.rounds} rounds (range across rounds); {psutil.cpu_count()} cores"
    )
    for mode, spec in variants:
        runs = loads[(mode.name, spec)]
        print(f"\n[{mode.name}]" + (f" {spec}" if several else ""))
        requests = ("routed requests/s", [b.requests for b in runs], 25_000)
        partials = ("PARTIAL frames/s", [b.partials for b in runs], 100_000)
        for (label, rates, target), cpus in (
            (requests, [b.cpu_requests for b in runs]),
            (partials, [b.cpu_partials for b in runs]),
        ):
            rate = statistics.median(rates)
            cpu, loop = (statistics.median(c[i] for c in cpus) for i in (0, 1))
            # Broker CPU per item, whatever share of the machine it got; its loop is one
            # thread, so one core for the loop alone would carry 1 / (loop's cost) a second.
            costs = [
                statistics.median(c[i] / 100 / r for c, r in zip(cpus, rates, strict=True))
                for i in (0, 1)
            ]
            print(
                f"  {label:<18}{rate:>9,.0f}{spread(rates)}   target >= {target:,}\n"
                f"  {'':<18}broker CPU {cpu:.0f}% of a core (its loop {loop:.0f}%): "
                f"{costs[0] * 1e6:.1f} us each ({costs[1] * 1e6:.1f} in its loop, "
                f"which a core of its own would carry at {1 / costs[1]:,.0f}/s)"
            )
        print(f"  errors            {sum(b.errors for b in runs):>9}")
        straight, proxied, xb = (statistics.median(b.trips[i] for b in runs) for i in range(3))
        added_proxy, added_xb = proxied - straight, xb - straight
        print(
            f"  round trip        straight {straight * 1e6:.0f} us, zmq.proxy "
            f"{proxied * 1e6:.0f} us, broker {xb * 1e6:.0f} us"
        )
        ratios = [(b.trips[2] - b.trips[0]) / (b.trips[1] - b.trips[0]) for b in runs]
        print(
            f"  added per trip    zmq.proxy {added_proxy * 1e6:.0f} us, broker "
            f"{added_xb * 1e6:.0f} us: {added_xb / added_proxy:.2f}x"
            f" (rounds: {min(ratios):.2f}-{max(ratios):.2f}x)   target <= 1.5x"
        )
        for count in counts:
            runs_idle = idles[(mode.name, spec, count)]
            cpu_all = [c[0] for c, _ in runs_idle]
            loop = statistics.median(c[1] for c, _ in runs_idle)
            rss = statistics.median(m for _, m in runs_idle) / 2**20
            print(
                f"  {count:>5} idle workers CPU {statistics.median(cpu_all):.1f}% of a core "
                f"({min(cpu_all):.1f}-{max(cpu_all):.1f}; its loop {loop:.1f}%), "
                f"RSS {rss:.0f} MiB" + ("   target < 25%" if count == 1000 else "")
            )


if __name__ == "__main__":
    main()
