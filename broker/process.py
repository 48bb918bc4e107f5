"""The broker in a process of its own, beside the facade that ``xb-broker`` runs: the two
share no interpreter lock, so HTTP work never delays the routing loop, nor the other
way round.

``start`` runs ``python -m xb.broker.process`` and waits for its first line on stdout:
``ready ADDRESS``, or ``error REASON`` (a port in use, keys that cannot be read). The
child stops on SIGTERM or SIGINT, and dies with its parent however the parent ends.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import zmq

from xb.core.errors import XbError
from xb.core.lifetime import child_env, die_with_parent

log = logging.getLogger("xb.broker")

START_TIMEOUT = 30.0
BIND_PATIENCE = 5.0  # seconds to wait for a port a broker just killed still holds


class BrokerStartError(XbError):
    """The broker process could not start; the message says why."""


def start(
    bind: str,
    *,
    heartbeat_interval: float,
    max_queue: int,
    home: Path | None,
    state: Path,
    scheduler: str = "fair",
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the broker process; it and the address it listens on."""
    command = [
        sys.executable,
        "-m",
        "xb.broker.process",
        bind,
        str(heartbeat_interval),
        str(max_queue),
        str(home) if home is not None else "",
        str(state),
        scheduler,
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, env=child_env())
    assert child.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        answered = selector.select(START_TIMEOUT)
    line = child.stdout.readline().decode(errors="replace").strip() if answered else ""
    kind, _, text = line.partition(" ")
    if kind != "ready":
        child.kill()
        code = child.wait()
        if kind == "error":
            reason = text
        elif answered:  # it closed its output without a word: it crashed
            reason = f"its process exited with code {code} (its log is above)"
        else:
            reason = f"no answer within {START_TIMEOUT:.0f} s"
        raise BrokerStartError(f"the broker did not start: {reason}")
    child.stdout.close()
    return child, text


def watch(child: subprocess.Popen[bytes], stopping: threading.Event) -> None:
    """Stop this process (SIGTERM to itself) if the broker process ends unasked: an API
    with no broker behind it would only answer 503."""

    def wait() -> None:
        code = child.wait()
        if not stopping.is_set():
            log.error("the broker process exited (code %s); stopping", code)
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, name="xb-broker-watch", daemon=True).start()


def stop(child: subprocess.Popen[bytes], grace: float) -> None:
    """Ask the broker process to stop; kill it after ``grace`` seconds."""
    if child.poll() is None:
        child.terminate()
    try:
        child.wait(grace)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(argv: list[str]) -> int:
    die_with_parent(signal.SIGTERM)
    bind, interval, max_queue, home, state, scheduler = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from xb.broker.server import Broker  # after the parent watch: importing takes a while

    deadline = time.monotonic() + BIND_PATIENCE
    while True:
        try:
            broker = Broker(
                bind,
                heartbeat_interval=float(interval),
                max_queue=int(max_queue),
                home=Path(home) if home else None,
                state=Path(state),
                scheduler=scheduler,
            )
            break
        except Exception as exc:  # whatever it is, the parent prints it and exits
            # A broker that has just been killed may hold the port a moment longer.
            in_use = isinstance(exc, zmq.ZMQError) and exc.errno == zmq.EADDRINUSE
            if not in_use or time.monotonic() > deadline:
                print("error " + " ".join(str(exc).split()), flush=True)
                return 1
            time.sleep(0.1)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        broker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C reaches the whole process group: the parent stops this process once its
    # open requests had their grace, so the broker must outlive that grace.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(f"ready {broker.address}", flush=True)
    broker.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
