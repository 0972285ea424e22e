"""The report's gallery: a deterministic sample of clips, ok and failed, with their media.

Clips are chosen by a hash of their key (of the input line, for a line that never got a key):
the smallest hashes win, about a quarter of them failures when there are any. The same output
always gives the same gallery, and a clip keeps its place as the output grows unless a clip with a
smaller hash arrives. Only the chosen clips' members are read: the tar's headers are walked and
every other member's data is seeked over (on object stores, in small ranged reads), and the walk
stops once the last chosen key of that tar has been passed.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vast.report.stats import full_rows
from vast.shards.store import OutputStore

FAILED_SHARE = 0.25
"""The gallery's share of failed rows, when the output has failures."""
SEEK_BLOCK = 1 << 16
"""Read size on object stores: a header costs one small ranged read, not a multi-megabyte block."""
MEDIA_FOLDER = "report/media"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # the key alphabet (vast.pipeline.keys): safe as a file name
_SHARD = re.compile(r"^shard-\d{6,}\.tar$")
_HASH_CHUNK = 1 << 16


@dataclass
class GalleryItem:
    """One gallery card: an ok sample with its media files, or a failed row with its class and message."""

    status: str
    key: str
    input: str
    shard: str = ""
    sample: dict[str, Any] = field(default_factory=dict)
    """The sample's ``json`` member, as committed."""
    files: dict[str, str] = field(default_factory=dict)
    """``mp4`` / ``flac`` / ``poster`` → file name in ``report/media/``."""
    poster_error: str = ""
    media_error: str = ""
    """Why the sample's members could not be read from its shard (a missing or damaged tar)."""
    ledger: dict[str, Any] = field(default_factory=dict)
    """The full ledger row (class, message, stage, source) of a failed item."""


def key_hash(ident: str) -> int:
    """64-bit hash of a key: stable across runs, machines and Python versions (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "big")


def sample_rows(ledger: pa.Table, n: int) -> pa.Table:
    """The ``n`` effective ledger rows (ok and failed) of the gallery, in hash order."""
    settled = ledger.filter(pc.is_in(ledger["status"], pa.array(["ok", "failed"])))
    if n <= 0 or settled.num_rows == 0:
        return settled.slice(0, 0)
    ids = pc.if_else(pc.equal(settled["key"], ""), settled["input"], settled["key"]).combine_chunks()
    hashes = np.fromiter((key_hash(s) for s in _strings(ids)), np.uint64, len(ids))
    is_ok = pc.equal(settled["status"], "ok").to_numpy(zero_copy_only=False)
    ok, failed = np.flatnonzero(is_ok), np.flatnonzero(~is_ok)
    n_failed = min(len(failed), max(1, round(n * FAILED_SHARE))) if len(failed) else 0
    n_ok = min(len(ok), n - n_failed)
    n_failed = min(len(failed), n - n_ok)  # few ok clips: fill the rest with failures
    pick = np.concatenate([_smallest(ok, hashes, n_ok), _smallest(failed, hashes, n_failed)])
    pick = pick[np.argsort(hashes[pick], kind="stable")]
    return settled.take(pa.array(pick, pa.int64()))


def _strings(arr: pa.Array) -> Iterable[str]:
    for start in range(0, len(arr), _HASH_CHUNK):  # bounded Python lists for a million keys
        yield from arr.slice(start, _HASH_CHUNK).to_pylist()


def _smallest(idx: np.ndarray, hashes: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        return idx[:0]
    if k < len(idx):
        idx = idx[np.argpartition(hashes[idx], k - 1)[:k]]
    return idx


def build_gallery(store: OutputStore, ledger: pa.Table, n: int, files: MediaFiles) -> list[GalleryItem]:
    """Sample ``n`` clips of the effective ``ledger``; write the ok ones' media through ``files``."""
    chosen = sample_rows(ledger, n)
    items = [GalleryItem(status=s, key=k, input=i, shard=sh or "") for s, k, i, sh in zip(
        chosen["status"].to_pylist(), chosen["key"].to_pylist(), chosen["input"].to_pylist(),
        chosen["shard"].to_pylist(), strict=True)]
    failed = chosen.filter(pc.equal(chosen["status"], "failed"))
    rows = {(r["key"], r["input"]): r for r in full_rows(store, failed)}
    by_shard: dict[str, dict[str, GalleryItem]] = {}
    for item in items:
        if item.status == "failed":
            item.ledger = rows.get((item.key, item.input), {})
        elif _SAFE_KEY.match(item.key) and _SHARD.match(item.shard):
            by_shard.setdefault(item.shard, {})[item.key] = item
        else:
            item.media_error = f"no readable shard member for key {item.key!r} in {item.shard!r}"
    for shard, wanted in by_shard.items():
        try:
            for key, ext, data in read_members(store, shard, set(wanted)):
                files.add(wanted[key], ext, data)
        except (OSError, tarfile.TarError) as e:  # the page still shows everything else
            for item in wanted.values():
                item.media_error = f"{shard}: {type(e).__name__}: {e}"
        for item in wanted.values():
            if not (item.sample or item.files or item.media_error):
                item.media_error = f"{item.key} is not in {shard}"
    return items


def read_members(store: OutputStore, shard: str, keys: set[str]) -> Iterable[tuple[str, str, bytes]]:
    """``(key, extension, bytes)`` of every member of ``keys`` in one shard tar, one at a time.

    A sample's members are adjacent in a shard, so once a chosen key has been passed it is complete,
    and the walk ends when every chosen key is.
    """
    done: set[str] = set()
    current = None
    with store.fs.open(store.path(shard), "rb", block_size=SEEK_BLOCK) as f, \
            tarfile.open(fileobj=f, mode="r:") as tf:
        for info in tf:
            key, _, ext = PurePosixPath(info.name).name.partition(".")
            if key != current:
                if current in keys:
                    done.add(current)
                if done >= keys:
                    return
                current = key
            if key in keys and info.isfile():
                member = tf.extractfile(info)
                yield key, ext, member.read() if member else b""


class MediaFiles:
    """Writes the gallery's media into ``report/media/`` of an output (local or remote), each file
    atomically, and afterwards removes what an earlier report left there that this one did not write."""

    def __init__(self, store: OutputStore, folder: str = MEDIA_FOLDER,
                 poster: Callable[[bytes, float], bytes] | None = None):
        self.store, self.folder = store, folder
        self.poster = poster or poster_frame
        self.written: set[str] = set()
        store.fs.makedirs(store.path(folder), exist_ok=True)

    def add(self, item: GalleryItem, ext: str, data: bytes) -> None:
        """Keep one member of ``item``: its json as the item's sample, its media as a file."""
        if ext == "json":
            item.sample = json.loads(data)
            return
        if ext not in ("mp4", "flac"):
            return  # txt repeats vast_cap, which the card shows from the json
        name = f"{item.key}.{ext}"
        self._write(name, data)
        item.files[ext] = name
        if ext == "mp4":  # the writer puts json first, so the clip's duration is known here
            duration = item.sample.get("duration")
            at = duration / 2 if isinstance(duration, (int, float)) and duration > 0 else 0.0
            try:
                self._write(f"{item.key}.jpg", self.poster(data, at))
                item.files["poster"] = f"{item.key}.jpg"
            except RuntimeError as e:
                item.poster_error = str(e)

    def _write(self, name: str, data: bytes) -> None:
        self.store.write_bytes(f"{self.folder}/{name}", data)
        self.written.add(name)

    def remove_stale(self) -> list[str]:
        """Remove files of an earlier report's gallery; returns their names."""
        stale = [n for n in self.store.ls(self.folder) if PurePosixPath(n).name not in self.written]
        for name in stale:
            self.store.remove(name)
        return stale


def poster_frame(mp4: bytes, at_s: float) -> bytes:
    """A JPEG of the clip's frame at ``at_s`` seconds (ffmpeg); raises RuntimeError with ffmpeg's message."""
    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "clip.mp4", Path(d) / "poster.jpg"
        src.write_bytes(mp4)
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{at_s:.3f}", "-i", str(src), "-frames:v", "1",
               "-q:v", "4", "-y", str(dst)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 or not dst.exists():
            raise RuntimeError(f"no poster frame: {proc.stderr.strip()[-300:] or 'ffmpeg wrote no frame'}")
        return dst.read_bytes()
