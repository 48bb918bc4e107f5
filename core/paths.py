"""Which files a launch or a registration may name: only those inside the model folders.

A model file is read by llama.cpp or chatglm.cpp with the rights of the process that
loads it, so a path a request names must not reach the rest of the machine. The folders
are ``$XB_HOME/models``, the download cache ``$XB_HOME/cache``, and those the operator
allows (``--model-dir``, repeatable, on ``xb-worker`` and ``xb-broker``; the commands
pass them on to their children in ``XB_MODEL_DIRS``). A path is resolved first
(``~``, symlinks, ``..``), so a link inside a folder cannot point outside it.

A refusal says the same whether or not the file exists, so the API cannot be used to
probe the machine's files.

Registry fields that become file or folder names (quantizations, file name templates,
hub repository ids, revisions) are checked by ``safe_name``: one name, no separators,
no ``..``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from xb.core.errors import XbError
from xb.core.settings import xb_home

MODEL_DIRS_ENV = "XB_MODEL_DIRS"  # os.pathsep-separated, as PATH is
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_+][A-Za-z0-9._+-]{0,199}$")


class PathRefused(XbError):
    """A path outside the model folders, or no file at all; the message says the same
    for both."""


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve()


def allowed_folders() -> list[Path]:
    """The folders a model file may be in, resolved, for this process."""
    home = xb_home()
    named = [home / "models", home / "cache"]
    named += [Path(d) for d in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if d]
    folders: list[Path] = []
    for folder in named:
        try:
            resolved = _resolved(folder)
        except (OSError, RuntimeError, ValueError):
            continue  # an unknown ~user or a symlink loop allows nothing
        if resolved not in folders:
            folders.append(resolved)
    return folders


def allow_folders(folders: Iterable[str | Path]) -> list[Path]:
    """Add ``folders`` to this process's model folders and to its children's (they read
    ``XB_MODEL_DIRS``); the whole list. Called once by a command as it starts."""
    current = [d for d in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if d]
    for folder in folders:
        text = str(_resolved(Path(folder)))
        if text not in current:
            current.append(text)
    os.environ[MODEL_DIRS_ENV] = os.pathsep.join(current)
    return allowed_folders()


def _refusal(given: str, folders: list[Path]) -> PathRefused:
    where = ", ".join(str(f) for f in folders)
    return PathRefused(
        f"model file {given!r} does not exist or is outside the model folders ({where}); "
        "put it in one of them, or allow its folder with --model-dir"
    )


def inside(path: str | Path, folders: list[Path] | None = None) -> Path | None:
    """``path`` resolved, if it lies inside one of ``folders`` (default: this process's);
    None otherwise. Nothing is opened: it may not exist."""
    folders = allowed_folders() if folders is None else folders
    try:
        resolved = _resolved(Path(path))
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a loop, an unknown ~user
        return None
    if any(resolved == f or resolved.is_relative_to(f) for f in folders):
        return resolved
    return None


def allowed_file(path: str, folders: list[Path] | None = None) -> Path:
    """The model file ``path`` names, resolved; ``PathRefused`` unless it is an existing
    file inside the model folders. Existence is only looked at inside them."""
    folders = allowed_folders() if folders is None else folders
    resolved = inside(path, folders)
    if resolved is None or not resolved.is_file():
        raise _refusal(path, folders)
    return resolved


def check_folder(path: str, folders: list[Path] | None = None) -> None:
    """``PathRefused`` unless ``path`` (a file or a folder) lies inside the model folders;
    for a registration, whose file may not be there yet."""
    folders = allowed_folders() if folders is None else folders
    if inside(path, folders) is None:
        raise _refusal(path, folders)


def safe_name(value: str) -> bool:
    """Whether ``value`` can be one file or folder name: no separator, no ``..``, no
    leading dot, only the characters model files are named with."""
    return bool(_SAFE_NAME.match(value)) and ".." not in value
