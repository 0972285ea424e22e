"""A local HTTP file server for tests: byte ranges honoured, failures scripted, requests counted.

Python's ``http.server`` ignores ``Range``, but yt-dlp's section downloads (ffmpeg seeking
inside an mp4 over HTTP) and resumed downloads need ``206 Partial Content``. This server
serves a directory on 127.0.0.1 at an ephemeral port with ``Range: bytes=`` support (one
range per request), ``HEAD``, and per-path scripted failures::

    with RangeHTTPServer(root) as srv:
        srv.fail_times("flaky.mp4", 429, 2)   # two 429s, then the file
        srv.fail_always("gone.mp4", 404)
        srv.stream("zero.mp4", b"\0" * 65536)        # an endless body, as /dev/zero would be
        url = srv.url("flaky.mp4")
        ...
        assert srv.statuses("flaky.mp4")[:2] == [429, 429]

Every request is recorded (method, path, status, bytes of body sent) so tests can assert that
retries happened or that a section download read only part of a file.
"""

from __future__ import annotations

import mimetypes
import re
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
STREAM_LIMIT_S = 120.0  # the longest a scripted stream runs
_CHUNK = 64 * 1024


@dataclass
class Request:
    """One request the server answered."""

    method: str
    path: str  # URL path relative to the root, without the leading slash or query
    status: int
    range: str | None  # the Range header as sent, None when absent
    body_bytes: int  # body bytes written to the socket (less than planned if the client hung up)


class RangeHTTPServer:
    """Serve ``root`` over HTTP on 127.0.0.1; use as a context manager (or ``start``/``close``)."""

    def __init__(self, root: str | Path, host: str = "127.0.0.1"):
        self.root = Path(root).resolve()
        self.host = host
        self.requests: list[Request] = []
        self._failures: dict[str, tuple[int, int | None]] = {}  # path -> (status, times left or None)
        self._streams: dict[str, tuple[bytes, int, float, bool]] = {}  # path -> stream() arguments
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RangeHTTPServer:
        """Bind an ephemeral port and serve in a daemon thread."""
        handler = type("Handler", (_Handler,), {"owner": self})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="RangeHTTPServer",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> RangeHTTPServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- addresses and scripted failures ----------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        assert self._server is not None, "server not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        """The URL of ``path`` (relative to root; it need not exist, e.g. for scripted failures)."""
        return f"{self.base_url}/{quote(path.lstrip('/'))}"

    def fail_times(self, path: str, status: int, times: int) -> None:
        """Answer the next ``times`` requests for ``path`` with ``status``, then serve it normally."""
        with self._lock:
            self._failures[path.lstrip("/")] = (status, times)

    def fail_always(self, path: str, status: int) -> None:
        """Answer every request for ``path`` with ``status``."""
        with self._lock:
            self._failures[path.lstrip("/")] = (status, None)

    def stream(self, path: str, data: bytes, piece: int = 65536, interval_s: float = 0.0,
               endless: bool = True) -> None:
        """Answer ``path`` (any range asked: ignored) with ``data`` in pieces of ``piece`` bytes,
        ``interval_s`` apart, without a Content-Length; ``endless``: ``data`` again and again. An endless
        source, or, with an interval, one that trickles. The server stops when the client hangs up,
        after ``STREAM_LIMIT_S``, or when a send stalls for 10 s."""
        with self._lock:
            self._streams[path.lstrip("/")] = (data, piece, interval_s, endless)

    def clear_failures(self, path: str) -> None:
        """Serve ``path`` normally again."""
        with self._lock:
            self._failures.pop(path.lstrip("/"), None)

    # -- what happened -----------------------------------------------------------------------

    def requests_for(self, path: str) -> list[Request]:
        """Requests answered for ``path``, in order."""
        path = path.lstrip("/")
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def count(self, path: str) -> int:
        """Number of requests answered for ``path``."""
        return len(self.requests_for(path))

    def statuses(self, path: str) -> list[int]:
        """HTTP statuses answered for ``path``, in order."""
        return [r.status for r in self.requests_for(path)]

    def bytes_sent(self, path: str) -> int:
        """Body bytes written for ``path`` over all requests."""
        return sum(r.body_bytes for r in self.requests_for(path))

    # -- used by the handler -----------------------------------------------------------------

    def _scripted_failure(self, path: str) -> int | None:
        with self._lock:
            if path not in self._failures:
                return None
            status, left = self._failures[path]
            if left is None:
                return status
            if left <= 0:
                del self._failures[path]
                return None
            self._failures[path] = (status, left - 1)
            return status

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    owner: RangeHTTPServer
    # HTTP/1.1 keeps connections alive between ffmpeg's range requests; every answer has a length.
    protocol_version = "HTTP/1.1"

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # a client hanging up on a kept-alive connection is normal (ffmpeg does it on seeks)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests assert on ``owner.requests``, not on stderr noise

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        range_header = self.headers.get("Range")
        failure = self.owner._scripted_failure(rel)
        if failure is not None:
            self._send_status(rel, failure, range_header, body)
            return
        if rel in self.owner._streams:
            self._send_stream(rel, range_header, body)
            return
        target = (self.owner.root / rel).resolve()
        if not target.is_relative_to(self.owner.root) or not target.is_file():
            self._send_status(rel, HTTPStatus.NOT_FOUND, range_header, body)
            return
        size = target.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        if range_header:
            m = _RANGE.match(range_header.strip())
            parsed = _parse_range(m, size) if m else None
            if parsed is None:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self.owner._record(Request(self.command, rel, 416, range_header, 0))
                return
            start, end = parsed
            status = HTTPStatus.PARTIAL_CONTENT
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        # recorded before the body goes out: a client that has read it all must find it counted
        record = Request(self.command, rel, int(status), range_header, 0)
        self.owner._record(record)
        sent = 0
        if body:
            try:
                with target.open("rb") as f:
                    f.seek(start)
                    while sent < length:
                        chunk = f.read(min(_CHUNK, length - sent))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                # ffmpeg drops a connection mid-body when it seeks; that is normal, not an error
                self.close_connection = True
            with self.owner._lock:
                record.body_bytes = sent

    def _send_stream(self, rel: str, range_header: str | None, body: bool) -> None:
        data, piece, interval, endless = self.owner._streams[rel]
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", mimetypes.guess_type(rel)[0] or "application/octet-stream")
        self.send_header("Connection", "close")  # no length: the body ends when the connection does
        self.end_headers()
        self.close_connection = True
        record = Request(self.command, rel, 200, range_header, 0)
        self.owner._record(record)
        if not body:
            return
        self.connection.settimeout(10)  # a client that stopped reading must not hold this thread
        sent, until = 0, time.monotonic() + STREAM_LIMIT_S
        try:
            while time.monotonic() < until and (endless or sent < len(data)):
                at = sent % len(data)
                self.wfile.write(data[at:at + piece])
                sent += len(data[at:at + piece])
                with self.owner._lock:
                    record.body_bytes = sent
                if interval:
                    time.sleep(interval)
        except OSError:  # the client hung up (or stalled): the stream ends
            pass

    def _send_status(self, rel: str, status: int, range_header: str | None, body: bool) -> None:
        phrase = HTTPStatus(status).phrase
        payload = f"{status} {phrase}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        if status == HTTPStatus.TOO_MANY_REQUESTS:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.owner._record(Request(self.command, rel, int(status), range_header, len(payload) if body else 0))
        if body:
            try:
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True


def _parse_range(m: re.Match[str], size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` → inclusive (start, end), or None if unsatisfiable."""
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix range: the last n bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end
