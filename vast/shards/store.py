"""The output directory, local or remote, through fsspec, with atomic commits.

Layout of an output directory::

    shard-000000.tar        the samples of commit 0 (absent when a commit holds only failures)
    shard-000000.parquet    its manifest, one row per sample
    ledger/part-000000.parquet   every row of commit 0, ok and failed: the commit record
    plan.parquet            the requests of the latest run (for ``status``)
    config.yaml             the resolved config of the latest run (for ``retry``)
    summary.json            dataset totals, rewritten at the end of each run

A commit becomes visible when its ledger part exists: the tar and manifest are written first, the
ledger part last, each one atomically (write to a temporary name and rename on a local disk; a
single completed upload on object stores). Files of a commit without its ledger part are debris of
a crash and are removed by the next run.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

import fsspec

COMMIT_RE = re.compile(r"(?:shard|part)-(\d{6,})\.(?:tar|parquet)$")


class OutputError(Exception):
    """An output directory that cannot be used as asked; the command is refused."""


class NotAnOutput(OutputError):
    """The path holds no output of ``ingest`` (nothing is created there)."""


class OutputNotWritable(OutputError):
    """The output cannot be written (read-only, no permission, a file in the way, disk full)."""


class OutputLocked(OutputError):
    """Another run holds the output's lock."""


class OutputStore:
    """An output directory addressed by path or URL (``out/``, ``s3://bucket/corpus``).

    ``create=False`` opens an existing output only (``NotAnOutput`` otherwise) and writes nothing.
    """

    def __init__(self, url: str, create: bool = True):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols
        if not create:
            if not self.fs.isdir(self.path("ledger")):
                what = "no ledger/ folder in it" if self.fs.exists(self.root) else "it does not exist"
                raise NotAnOutput(f"{self.url} is not a vast-pipeline output ({what}): give the --output "
                                  "directory of an ingest")
            return
        try:
            self.fs.makedirs(self.path("ledger"), exist_ok=True)
        except OSError as e:
            raise OutputNotWritable(f"cannot write to {self.url} ({e.strerror or e}): choose a writable "
                                    "--output") from None

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, name: str) -> bool:
        return self.fs.exists(self.path(name))

    def open(self, name: str, mode: str = "rb") -> IO[Any]:
        return self.fs.open(self.path(name), mode)

    def ls(self, folder: str = "") -> list[str]:
        """Names (relative to the root) of the files directly in ``folder``."""
        base = self.path(folder) if folder else self.root
        try:
            names = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        prefix = f"{folder}/" if folder else ""
        return sorted(prefix + n.rstrip("/").rsplit("/", 1)[-1] for n in names)

    def size(self, name: str) -> int:
        return int(self.fs.size(self.path(name)))

    def put_file(self, local_file: str | Path, name: str) -> None:
        """Publish ``local_file`` as ``name`` atomically, consuming the local file."""
        target = self.path(name)
        os.chmod(local_file, 0o644)  # mkstemp makes files private; shards are meant to be read
        if self.local:
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.move(str(local_file), tmp)
            os.replace(tmp, target)  # atomic on one filesystem
        else:
            self.fs.put_file(str(local_file), target)  # object appears only once the upload completes
            os.unlink(local_file)

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``data`` as ``name`` atomically."""
        fd, tmp = tempfile.mkstemp(dir=self.staging_dir())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.put_file(tmp, name)

    def write_parquet(self, name: str, table: Any) -> None:
        """Write a pyarrow table as parquet (zstd) to ``name``, atomically."""
        import io

        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        self.write_bytes(name, buf.getvalue())

    def staging_dir(self) -> str:
        """A local folder for files being built: inside the output dir when it is local (so the
        final rename stays on one filesystem), else the system temp dir."""
        if self.local:
            d = self.path(".staging")
            os.makedirs(d, exist_ok=True)
            return d
        return tempfile.gettempdir()

    def remove(self, name: str) -> None:
        self.fs.rm(self.path(name))

    def committed_numbers(self) -> list[int]:
        return sorted(int(m.group(1)) for n in self.ls("ledger") if (m := COMMIT_RE.search(n)))

    def clean_uncommitted(self) -> list[str]:
        """Remove shard files whose commit never completed, and stale temporaries. Returns names."""
        committed = set(self.committed_numbers())
        removed = []
        for name in self.ls():
            m = COMMIT_RE.search(name)
            stale_tmp = ".tmp-" in name
            if stale_tmp or (m and int(m.group(1)) not in committed):
                self.remove(name)
                removed.append(name)
        for name in self.ls("ledger"):
            if ".tmp-" in name:
                self.remove(name)
                removed.append(name)
        if self.local:
            shutil.rmtree(self.path(".staging"), ignore_errors=True)
        return removed

    def lock(self) -> Any:
        """Hold an exclusive lock on a local output dir (two runs on one dir would race)."""
        if not self.local:
            return _NoLock()
        return lock_folder(self.root, "vast-pipeline run")


def lock_folder(folder: str | Path, what: str) -> IO[Any]:
    """Hold ``folder/.lock`` exclusively for as long as the returned file is open (closed: released).

    ``OutputLocked`` names the other ``what`` that holds it; ``OutputNotWritable`` when the lock file
    cannot be made.
    """
    import fcntl

    lock = os.path.join(folder, ".lock")
    try:
        f = open(lock, "w")  # noqa: SIM115 - held for the run
    except OSError as e:
        raise OutputNotWritable(f"cannot write to {folder} ({e.strerror or e}): choose a writable "
                                "--output") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise OutputLocked(f"another {what} holds {folder} (lock file {lock}): wait for it to finish, "
                           "or use another --output") from None
    return f


class _NoLock:
    def close(self) -> None:
        """Object stores have no lock: one run per output prefix is the user's contract."""
