"""The download cache under an xb home, as the worker fills it and a user lists and prunes
it (``xb cache``): one folder per repository, one per revision below it."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from xb.core.errors import XbError


class CacheError(XbError):
    """A cache entry that is not there."""


def cache_dir(home: Path) -> Path:
    return home / "cache"


def repo_dir(home: Path, repo_id: str) -> Path:
    return cache_dir(home) / ("models--" + repo_id.replace("/", "--"))


def cached_files(home: Path) -> list[dict[str, Any]]:
    """Every model file in the cache: repository, file, revision, size and path."""
    out: list[dict[str, Any]] = []
    for repo in sorted(cache_dir(home).glob("models--*")):
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        for file in sorted(repo.glob("*/*")):
            if file.is_file() and not file.name.endswith((".lock", ".part")):
                out.append(
                    {
                        "repo_id": repo_id,
                        "file": file.name,
                        "revision": file.parent.name,
                        "size": file.stat().st_size,
                        "path": str(file),
                    }
                )
    return out


def remove_cached(home: Path, repo_id: str) -> int:
    """Delete a repository's files from the cache; the bytes freed."""
    folder = repo_dir(home, repo_id)
    if not folder.is_dir():
        raise CacheError(f"{repo_id} is not in the cache at {cache_dir(home)}")
    freed = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder)
    return freed
