"""Child processes that die with their parent, even when the parent is killed.

A model process must never outlive its worker (it holds gigabytes and a GPU), nor a
``--local`` worker its broker. On Linux the kernel sends the child a signal when its
parent dies (``PR_SET_PDEATHSIG``); elsewhere a thread watches the parent's pid.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("xb")

PARENT_ENV = "XB_PARENT_PID"  # set by a parent for the children that must die with it
_PR_SET_PDEATHSIG = 1


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child that should die with this process."""
    return {**(env if env is not None else os.environ), PARENT_ENV: str(os.getpid())}


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """Receive ``sig`` when the process that started this one ends. Without
    ``XB_PARENT_PID`` (started by hand, say) nothing changes."""
    expected = os.environ.get(PARENT_ENV)
    if not expected or not expected.isdigit():
        return
    parent = int(expected)
    if not _pdeathsig(sig):
        threading.Thread(target=_watch, args=(parent, sig), name="xb-parent", daemon=True).start()
    if os.getppid() != parent:  # it died before the kernel was asked to tell us
        os.kill(os.getpid(), sig)


def _pdeathsig(sig: signal.Signals) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, sig: signal.Signals) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("parent process %d is gone; exiting", parent)
    os.kill(os.getpid(), sig)
