"""A hub-shaped HTTP server on 127.0.0.1 for ``models pull`` tests (no real hub is reachable).

It answers the calls ``huggingface_hub.snapshot_download`` makes when ``HF_ENDPOINT`` points at it:

- ``GET /api/models/ORG/NAME[/revision/REV]``: the repo info (``sha``, ``siblings``);
- ``GET /api/models/ORG/NAME/tree/REV``: the file listing with git blob ids, and for files stored in
  LFS (``lfs=`` names) their sha256 and size;
- ``HEAD``/``GET /ORG/NAME/resolve/REV/FILE``: the file, with ``X-Repo-Commit``, ``ETag`` (the LFS
  sha256 or the blob id) and byte ranges (``Range: bytes=N-``), so interrupted downloads resume.

``corrupt(repo, name)`` serves other bytes than the listing's checksums promise (a bad mirror);
``cut_once(repo, name, n)`` drops the connection after ``n`` bytes of the next download of a file;
``requests`` records ``(method, path, Range header)`` of every request.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit


class HubServer:
    """Serve ``repos`` (repo id → folder) as a model hub; a context manager."""

    def __init__(self, repos: dict[str, Path], lfs: tuple[str, ...] = (".bin", ".safetensors")):
        self.files: dict[str, dict[str, bytes]] = {
            repo: {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*"))
                   if p.is_file()}
            for repo, root in repos.items()}
        self.lfs = lfs
        self.sha = {repo: hashlib.sha1(repo.encode()).hexdigest() for repo in repos}  # the commit id
        self.corrupted: set[tuple[str, str]] = set()
        self.cuts: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self._server: ThreadingHTTPServer | None = None

    def __enter__(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def corrupt(self, repo: str, name: str) -> None:
        """Serve ``name`` with its first byte flipped; the listing keeps the true checksums."""
        self.corrupted.add((repo, name))

    def cut_once(self, repo: str, name: str, after: int) -> None:
        """Hang up after ``after`` body bytes of the next GET of ``name`` (an interrupted transfer)."""
        self.cuts[(repo, name)] = after

    def body(self, repo: str, name: str) -> bytes:
        data = self.files[repo][name]
        return bytes([data[0] ^ 0xFF]) + data[1:] if (repo, name) in self.corrupted else data

    def entry(self, repo: str, name: str) -> dict[str, Any]:
        data = self.files[repo][name]
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        out: dict[str, Any] = {"type": "file", "oid": blob, "size": len(data), "path": name}
        if name.endswith(self.lfs):
            out["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return out


_INFO = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_TREE = re.compile(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/.*)?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer

    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(head=False)

    def _json(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _missing(self) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _answer(self, head: bool) -> None:
        hub = self.hub
        path = unquote(urlsplit(self.path).path)
        hub.requests.append((self.command, path, self.headers.get("Range")))
        if m := _TREE.match(path):
            if m.group(1) not in hub.files:
                return self._missing()
            return self._json([hub.entry(m.group(1), n) for n in hub.files[m.group(1)]])
        if m := _INFO.match(path):
            repo = m.group(1)
            if repo not in hub.files:
                return self._missing()
            return self._json({"id": repo, "modelId": repo, "sha": hub.sha[repo], "private": False,
                               "siblings": [{"rfilename": n} for n in hub.files[repo]]})
        m = _RESOLVE.match(path)
        if not m or m.group(1) not in hub.files or m.group(3) not in hub.files[m.group(1)]:
            return self._missing()
        repo, name = m.group(1), m.group(3)
        data, entry = hub.body(repo, name), hub.entry(repo, name)
        start, status = 0, 200
        if (r := _RANGE.match(self.headers.get("Range") or "")) and int(r.group(1)) < len(data):
            start, status = int(r.group(1)), 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", hub.sha[repo])
        self.send_header("ETag", f'"{entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        cut = hub.cuts.pop((repo, name), None)
        self.wfile.write(data[start:] if cut is None else data[start:start + cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
