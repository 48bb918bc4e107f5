"""ZeroMQ CURVE keys: the broker's pair, this machine's peer pair, and the broker's
allow-list, all under ``$XB_HOME/keys``::

    broker.key  broker.key_secret   the broker's pair, made on its first start
    peer.key    peer.key_secret     the pair of the workers and facades of this home
    allowed/NAME.key                public keys the broker accepts

A broker allows the peer key of its own home, so a worker or facade started with the same
``XB_HOME`` needs nothing more, whichever of them starts first: a peer waits for the
broker's key (``await_peer_keys``), and ``broker.key`` is written last, once the peer key is
allowed. A worker elsewhere is given the broker's public key and has its own public key put
into ``allowed/`` (``xb keys``). Keys are z85 text, 40 characters.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from xb.core.errors import XbError

_KEY = re.compile(rb'^\s*(public|secret)-key\s*=\s*"([0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40})"')
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
BROKER_KEY_POLL = 0.5  # seconds between looks for a broker key not made yet

log = logging.getLogger("xb.keys")


class KeysError(XbError):
    """A key that cannot be read or written; the message says which and why."""


@dataclass(frozen=True)
class KeyPair:
    public: bytes
    secret: bytes


@dataclass(frozen=True)
class PeerKeys:
    """What a worker or facade needs to reach a CURVE broker."""

    own: KeyPair
    broker: bytes  # the broker's public key


def keys_dir(home: Path) -> Path:
    return home / "keys"


def _read(path: Path, kind: str) -> bytes | None:
    try:
        lines = path.read_bytes().splitlines()
    except OSError:
        return None
    for line in lines:
        match = _KEY.match(line)
        if match and match.group(1).decode() == kind:
            return match.group(2)
    return None


def _write(path: Path, public: bytes, secret: bytes | None, *, exclusive: bool = False) -> bool:
    """Write a key file whole (readers never see half of one); with ``exclusive``, only if
    there is none yet. Whether it was written."""
    text = f'# xb CURVE key\nmetadata\ncurve\n    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    if not exclusive:
        tmp.replace(path)
        return True
    try:
        os.link(tmp, path)  # fails if the file exists, where replace would overwrite it
    except FileExistsError:
        tmp.unlink()
        return False
    except OSError:
        # A file system without hard links: the last writer wins, as before.
        tmp.replace(path)
        return True
    tmp.unlink()
    return True


def load_or_create(home: Path, name: str) -> KeyPair:
    """The pair ``name`` under ``home``, made the first time it is asked for."""
    import zmq

    folder = keys_dir(home)
    secret_file, public_file = folder / f"{name}.key_secret", folder / f"{name}.key"
    public, secret = _read(secret_file, "public"), _read(secret_file, "secret")
    if public is not None and secret is not None:
        if _read(public_file, "public") != public:
            # Its maker stopped between the two files: peers wait for the public one.
            _write(public_file, public, None)
        return KeyPair(public, secret)
    if secret_file.exists():
        raise KeysError(f"{secret_file} is not a key file; move it away to make a new pair")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = zmq.curve_keypair()
    if not _write(secret_file, public, secret, exclusive=True):
        # Another process of this home made the pair a moment ago (a broker and a worker
        # started together both make the peer pair): one pair for both, theirs.
        return load_or_create(home, name)
    _write(public_file, public, None)
    return KeyPair(public, secret)


def broker_keys(home: Path) -> KeyPair:
    """The broker's pair; the peer key of this home is allowed first, since peers waiting
    for ``broker.key`` connect as soon as it appears."""
    allow(home, load_or_create(home, "peer").public.decode(), "local")
    return load_or_create(home, "broker")


def peer_keys(home: Path, broker_key: str | None = None) -> PeerKeys:
    """This home's peer pair, and the broker's public key: given (text or a .key file), or
    the one of a broker that runs with this home."""
    own = load_or_create(home, "peer")
    if broker_key:
        return PeerKeys(own, parse_key(broker_key))
    server = _home_broker_key(home)
    if server is None:
        raise KeysError(
            f"no broker key in {keys_dir(home)}: give the broker's public key with "
            "--broker-key (run 'xb keys' on the broker's machine), or --insecure"
        )
    return PeerKeys(own, server)


def await_peer_keys(
    home: Path, broker_key: str | None = None, poll: float = BROKER_KEY_POLL
) -> PeerKeys:
    """``peer_keys``, waiting as long as it takes for the broker of this home to make its
    key: a peer started before its broker (by a script, a compose file or a service manager
    starting both) waits instead of failing. A key file there that cannot be used is still
    an error."""
    own = load_or_create(home, "peer")
    if broker_key:
        return PeerKeys(own, parse_key(broker_key))
    waited = False
    while (server := _home_broker_key(home)) is None:
        if not waited:
            log.warning(
                "waiting for the broker's key in %s (an xb-broker started with this XB_HOME "
                "makes it; for a broker elsewhere give --broker-key)",
                keys_dir(home) / "broker.key",
            )
            waited = True
        time.sleep(poll)
    if waited:
        log.warning("found the broker's key in %s", keys_dir(home) / "broker.key")
    return PeerKeys(own, server)


def _home_broker_key(home: Path) -> bytes | None:
    """The public key of the broker that runs with this home; None if it has made none."""
    path = keys_dir(home) / "broker.key"
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KeysError(f"cannot read the broker's key {path}: {exc.strerror}") from None
    for line in text.splitlines():
        match = _KEY.match(line)
        if match and match.group(1) == b"public":
            return match.group(2)
    raise KeysError(
        f"{path} is not a key file; restart the broker of this home, which writes it again"
    )


def parse_key(text: str) -> bytes:
    """A z85 public key given as itself or as a path to a .key file."""
    candidate = text.strip()
    if len(candidate) == 40 and _KEY.match(f'public-key = "{candidate}"'.encode()):
        return candidate.encode()
    key = _read(Path(candidate).expanduser(), "public")
    if key is None:
        raise KeysError("a key is 40 characters of z85 text, or the path of a .key file")
    return key


def allow(home: Path, public_key: str, name: str) -> Path:
    """Put a public key into the broker's allow-list as ``allowed/NAME.key``."""
    if not _NAME.match(name):
        raise KeysError("a key's name is letters, digits, '.', '_' and '-', at most 64")
    key = parse_key(public_key)
    folder = keys_dir(home) / "allowed"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{name}.key"
    if _read(path, "public") != key:
        _write(path, key, None)
    return path


def allowed(home: Path) -> set[bytes]:
    """The public keys in the allow-list."""
    folder = keys_dir(home) / "allowed"
    keys = {_read(path, "public") for path in sorted(folder.glob("*.key"))}
    return {key for key in keys if key is not None}
