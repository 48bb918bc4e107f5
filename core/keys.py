"""ZeroMQ CURVE keys: the broker's pair, this machine's peer pair, and the broker's
allow-list, all under ``$XB_HOME/keys``::

    broker.key  broker.key_secret   the broker's pair, made on its first start
    peer.key    peer.key_secret     the pair of the workers and facades of this home
    allowed/NAME.key                public keys the broker accepts

A broker allows the peer key of its own home, so a worker or facade started with the same
``XB_HOME`` needs nothing more. A worker elsewhere is given the broker's public key and has
its own public key put into ``allowed/`` (``xb keys``). Keys are z85 text, 40 characters.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from xb.core.errors import XbError

_KEY = re.compile(rb'^\s*(public|secret)-key\s*=\s*"([0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40})"')
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


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


def _write(path: Path, public: bytes, secret: bytes | None) -> None:
    text = f'# xb CURVE key\nmetadata\ncurve\n    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def load_or_create(home: Path, name: str) -> KeyPair:
    """The pair ``name`` under ``home``, made the first time it is asked for."""
    import zmq

    folder = keys_dir(home)
    secret_file, public_file = folder / f"{name}.key_secret", folder / f"{name}.key"
    public, secret = _read(secret_file, "public"), _read(secret_file, "secret")
    if public is not None and secret is not None:
        return KeyPair(public, secret)
    if secret_file.exists():
        raise KeysError(f"{secret_file} is not a key file; move it away to make a new pair")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    public, secret = zmq.curve_keypair()
    _write(secret_file, public, secret)
    _write(public_file, public, None)
    return KeyPair(public, secret)


def broker_keys(home: Path) -> KeyPair:
    """The broker's pair; the peer key of this home is allowed along the way."""
    pair = load_or_create(home, "broker")
    allow(home, load_or_create(home, "peer").public.decode(), "local")
    return pair


def peer_keys(home: Path, broker_key: str | None = None) -> PeerKeys:
    """This home's peer pair, and the broker's public key: given (text or a .key file), or
    the one of a broker that runs with this home."""
    own = load_or_create(home, "peer")
    if broker_key:
        return PeerKeys(own, parse_key(broker_key))
    server = _read(keys_dir(home) / "broker.key", "public")
    if server is None:
        raise KeysError(
            f"no broker key in {keys_dir(home)}: give the broker's public key with "
            "--broker-key (run 'xb keys' on the broker's machine), or --insecure"
        )
    return PeerKeys(own, server)


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
