"""CURVE keys of a home: a peer waits for a broker key not made yet, a broken one is an
error that says so, and processes of one home starting together make one peer pair."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from xb.core.keys import (
    KeysError,
    allowed,
    await_peer_keys,
    broker_keys,
    keys_dir,
    load_or_create,
    peer_keys,
)

pytestmark = pytest.mark.unit


def test_a_peer_waits_for_the_broker_key_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made: list[bytes] = []

    def broker_starts_later() -> None:
        time.sleep(0.3)
        made.append(broker_keys(tmp_path).public)

    later = threading.Thread(target=broker_starts_later)
    caplog.set_level(logging.INFO, "xb.keys")
    later.start()
    try:
        keys = await_peer_keys(tmp_path, poll=0.02)
    finally:
        later.join(10)
    assert keys.broker == made[0]
    assert keys.own == load_or_create(tmp_path, "peer")
    assert keys.own.public in allowed(tmp_path)  # the broker allowed the peer it found
    messages = [record.getMessage() for record in caplog.records]
    waiting = [m for m in messages if m.startswith("waiting for the broker's key in")]
    assert waiting == [
        f"waiting for the broker's key in {keys_dir(tmp_path) / 'broker.key'} "
        "(an xb-broker started with this XB_HOME makes it; for a broker "
        "elsewhere give --broker-key)"
    ]
    assert sum(m.startswith("found the broker's key in") for m in messages) == 1


def test_a_peer_whose_broker_key_is_there_does_not_wait(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = broker_keys(tmp_path)
    caplog.set_level(logging.INFO, "xb.keys")
    assert await_peer_keys(tmp_path).broker == broker.public
    assert caplog.records == []


def test_a_broker_key_that_is_not_a_key_is_an_error_not_a_wait(tmp_path: Path) -> None:
    keys_dir(tmp_path).mkdir(parents=True)
    (keys_dir(tmp_path) / "broker.key").write_text("not a key\n")
    with pytest.raises(KeysError, match=r"broker\.key is not a key file; restart the broker"):
        await_peer_keys(tmp_path)


def test_an_unreadable_broker_key_is_an_error_that_says_why(tmp_path: Path) -> None:
    (keys_dir(tmp_path) / "broker.key").mkdir(parents=True)
    with pytest.raises(KeysError, match=r"cannot read the broker's key .*: Is a directory"):
        await_peer_keys(tmp_path)


def test_without_waiting_a_missing_broker_key_is_the_error_it_was(tmp_path: Path) -> None:
    with pytest.raises(KeysError, match=r"no broker key in .*--broker-key"):
        peer_keys(tmp_path)


def test_a_broker_restarted_after_dying_between_its_two_files_writes_the_public_one(
    tmp_path: Path,
) -> None:
    pair = broker_keys(tmp_path)
    (keys_dir(tmp_path) / "broker.key").unlink()
    assert broker_keys(tmp_path) == pair
    assert peer_keys(tmp_path).broker == pair.public


def test_a_peer_pair_made_by_another_process_meanwhile_is_the_one_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker and a worker of one home started together both find no peer pair and both
    make one: the second to write takes the first's, so the key allowed is the one used."""
    theirs, ours = zmq.curve_keypair(), zmq.curve_keypair()

    def another_process_is_quicker() -> tuple[bytes, bytes]:
        subprocess.run([sys.executable, "-c", MAKE_PEER_PAIR, str(tmp_path), *theirs], check=True)
        return ours

    monkeypatch.setattr(zmq, "curve_keypair", another_process_is_quicker)
    assert load_or_create(tmp_path, "peer").public == theirs[0]
    monkeypatch.undo()
    assert load_or_create(tmp_path, "peer").public == theirs[0]
    assert peer_public_file(tmp_path) == theirs[0]


def test_a_home_on_a_file_system_without_hard_links_still_gets_its_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    pair = load_or_create(tmp_path, "peer")
    assert load_or_create(tmp_path, "peer") == pair
    assert peer_public_file(tmp_path) == pair.public
    assert sorted(p.name for p in keys_dir(tmp_path).iterdir()) == ["peer.key", "peer.key_secret"]


MAKE_PEER_PAIR = """
import sys
from pathlib import Path
from unittest import mock
import zmq
from xb.core.keys import load_or_create
pair = (sys.argv[2].encode(), sys.argv[3].encode())
with mock.patch.object(zmq, "curve_keypair", lambda: pair):
    load_or_create(Path(sys.argv[1]), "peer")
"""


def peer_public_file(home: Path) -> bytes:
    text = (keys_dir(home) / "peer.key").read_text()
    return text.split('public-key = "')[1][:40].encode()
