"""Model files from the hub into the xb cache, with progress, resumption and checks.

huggingface_hub does the fetching (``HF_ENDPOINT`` points it at a mirror or, in the
tests, at a local server): it resumes partial files, and it locks each file so that
concurrent launches of the same file download it once. This module adds progress
reports and the checksum check of the registry.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from xb import protocol as p

Report = Callable[[p.Progress], None]
REPORT_EVERY = 0.25  # seconds between progress reports


class DownloadError(Exception):
    """The file could not be fetched or did not check out; the message says which."""


def cache_dir(home: Path) -> Path:
    return home / "cache"


def fetch(download: p.Download, home: Path, report: Report) -> Path:
    """Fetch every file of ``download`` and return the path of the first (llama.cpp finds
    the other parts of a split file beside it)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError
    from tqdm.auto import tqdm

    cache = cache_dir(home)
    try:
        sizes = [
            get_hf_file_metadata(
                hf_hub_url(download.repo_id, name, revision=download.revision)
            ).size
            or 0
            for name in download.files
        ]
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"cannot reach {download.repo_id} on the model hub: {exc}") from exc
    meter = _Meter(sum(sizes), report)

    class Bar(tqdm):  # type: ignore[misc]
        """A silent progress bar that reports bytes to the worker instead of drawing."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.bytes = int(kwargs.get("initial") or 0)  # what an earlier attempt kept
            meter.show(self.bytes)

        def update(self, n: float | None = 1) -> bool | None:
            self.bytes += int(n or 0)
            meter.show(self.bytes)
            return None

    paths: list[Path] = []
    for name, size in zip(download.files, sizes, strict=True):
        try:
            local = hf_hub_download(
                download.repo_id,
                name,
                revision=download.revision,
                cache_dir=cache,
                tqdm_class=Bar,
            )
        except (HfHubHTTPError, OSError, ValueError) as exc:
            raise DownloadError(f"downloading {download.repo_id}/{name} failed: {exc}") from exc
        path = Path(local)
        if size and path.stat().st_size != size:
            raise DownloadError(
                f"{name} is {path.stat().st_size} bytes, the hub says {size}; remove it with "
                "xb cache remove and launch again"
            )
        paths.append(path)
        meter.finished += size
    meter.show(0)
    if download.sha256 and len(paths) == 1:
        _verify(paths[0], download.sha256)
    return paths[0]


class _Meter:
    """Bytes done over all the files of a download, reported a few times a second."""

    def __init__(self, total: int, report: Report) -> None:
        self.total, self.report = total, report
        self.finished = 0  # bytes of the files already complete
        self._started = self._last = time.monotonic()

    def show(self, current: int) -> None:
        """Report, if it is time, with ``current`` bytes of the file in progress."""
        done = self.finished + current
        now = time.monotonic()
        if now - self._last < REPORT_EVERY and done < self.total:
            return
        self._last = now
        rate = done / max(now - self._started, 1e-6)
        self.report(p.Progress("downloading", done, self.total, round(rate, 1)))


def _verify(path: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256.lower():
        blob = path.resolve()
        path.unlink()
        blob.unlink(missing_ok=True)  # the cached blob the snapshot link points at
        raise DownloadError(
            f"{path.name} failed its checksum (sha256 {digest.hexdigest()}, expected {sha256}); "
            "it was removed, launch again to fetch it anew"
        )


def cached_files(home: Path) -> list[dict[str, Any]]:
    """Every model file in the cache: repository, file, revision, size and path."""
    out: list[dict[str, Any]] = []
    root = cache_dir(home)
    for repo in sorted(root.glob("models--*")):
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        for snapshot in sorted((repo / "snapshots").glob("*")):
            for file in sorted(snapshot.rglob("*")):
                if file.is_file():
                    out.append(
                        {
                            "repo_id": repo_id,
                            "file": str(file.relative_to(snapshot)),
                            "revision": snapshot.name,
                            "size": file.stat().st_size,
                            "path": str(file),
                        }
                    )
    return out


def remove_cached(home: Path, repo_id: str) -> int:
    """Delete a repository's files from the cache; the bytes freed."""
    import shutil

    folder = cache_dir(home) / ("models--" + repo_id.replace("/", "--"))
    if not folder.is_dir():
        raise DownloadError(f"{repo_id} is not in the cache at {cache_dir(home)}")
    freed = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
    shutil.rmtree(folder)
    return freed
