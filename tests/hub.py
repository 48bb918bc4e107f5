"""A local stand-in for the Hugging Face hub: files served in the hub's URL layout.

huggingface_hub, pointed at it with ``HF_ENDPOINT``, asks ``HEAD`` then ``GET`` (with a
``Range`` to resume) on ``/{repo_id}/resolve/{revision}/{filename}``, and reads the commit,
ETag and size from the headers. ``delay`` slows each chunk so tests can watch progress.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 64 * 1024


class Hub:
    def __init__(self) -> None:
        self.files: dict[tuple[str, str], Path] = {}
        self.gets: Counter[str] = Counter()
        self.ranges: list[str] = []
        self.delay = 0.0  # seconds per chunk
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, repo_id: str, filename: str, path: Path) -> str:
        """Serve ``path`` as ``repo_id/filename``; its sha256."""
        self.files[(repo_id, filename)] = path
        return hashlib.sha256(path.read_bytes()).hexdigest()

    def start(self) -> Hub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _find(self) -> Path | None:
                match = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                if match is None:
                    return None
                return hub.files.get((match.group(1), match.group(3)))

            def _head(self, path: Path, start: int = 0) -> None:
                size = path.stat().st_size
                etag = hashlib.sha256(path.read_bytes()).hexdigest()
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(size))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(size - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                self.end_headers()

            def do_HEAD(self) -> None:
                path = self._find()
                if path is None:
                    self.send_error(404, "Entry not found")
                    return
                self.send_response(200)
                self._head(path)

            def do_GET(self) -> None:
                path = self._find()
                if path is None:
                    self.send_error(404, "Entry not found")
                    return
                hub.gets[self.path] += 1
                start = 0
                if "Range" in self.headers:
                    hub.ranges.append(self.headers["Range"])
                    start = int(re.findall(r"\d+", self.headers["Range"])[0])
                self.send_response(206 if start else 200)
                self._head(path, start)
                with path.open("rb") as f:
                    f.seek(start)
                    while chunk := f.read(CHUNK):
                        try:
                            self.wfile.write(chunk)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        time.sleep(hub.delay)

        return Handler
