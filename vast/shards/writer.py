"""``ShardWriter``: commit one batch of pipeline rows as one numbered, atomic commit.

A commit writes ``shard-NNNNNN.tar`` (the ok samples, each with the members of
``vast.shards.schema``), ``shard-NNNNNN.parquet`` (their manifest)
and finally ``ledger/part-NNNNNN.parquet`` (every row: ok and failed), each atomically; the
ledger part is the commit record (see ``vast.shards.store``). Writing the same batch twice under
the same number (a retried Ray task) replaces identical files, so a retry never duplicates.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
import time
from typing import Any

import pyarrow as pa

from vast.shards.ledger import ledger_row, ledger_table
from vast.shards.placeholder import black_mp4, silent_flac
from vast.shards.schema import AUDIO_RATE, MANIFEST_SCHEMA, json_bytes, manifest_row, sample_json
from vast.shards.store import OutputStore


def shard_name(number: int) -> str:
    return f"shard-{number:06d}.tar"


class ShardWriter:
    """Writes commits into an output directory (local path or fsspec URL)."""

    def __init__(self, output: str):
        self.store = OutputStore(output)

    def commit(self, rows: list[dict[str, Any]], number: int) -> pa.Table:
        """Commit ``rows`` as commit ``number``; returns the ledger rows it committed.

        A key the batch holds twice is one sample: the later rows of a key that has an ``ok`` row
        become ``duplicate`` ledger rows, never a second tar member (``ClipOwners`` does the same
        across batches and runs).
        """
        rows = _one_per_key(rows)
        ok = [r for r in rows if r["status"] == "ok"]
        tar = shard_name(number)
        ledger: list[dict[str, Any]] = []
        if ok:
            manifest = []
            fd, tmp = tempfile.mkstemp(suffix=".tar", dir=self.store.staging_dir())
            mtime = time.time()
            with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:
                for row in ok:
                    sample = sample_json(row)
                    members = sample_members(row, sample)
                    for ext, data in members.items():
                        _add_member(tf, f"{row['key']}.{ext}", data, mtime)
                    nbytes = sum(len(d) for d in members.values())
                    manifest.append(manifest_row(sample, tar, len(members["mp4"]), len(members["flac"])))
                    ledger.append(ledger_row(row, number, tar, sample["duration"], nbytes))
            self.store.put_file(tmp, tar)
            self.store.write_parquet(tar.replace(".tar", ".parquet"),
                                     pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA))
        ledger += [ledger_row(r, number) for r in rows if r["status"] != "ok"]
        table = ledger_table(ledger)
        self.store.write_parquet(f"ledger/part-{number:06d}.parquet", table)  # the commit record: last
        return table


def sample_members(row: dict[str, Any], sample: dict[str, Any]) -> dict[str, bytes]:
    """The four members of a sample (``vast.shards.schema``): a missing track becomes its placeholder."""
    duration = sample["duration"]
    return {
        "json": json_bytes(sample),
        "mp4": bytes(row["mp4"]) if sample["has_video"] else black_mp4(duration),
        "flac": bytes(row["flac"]) if sample["has_audio"] else silent_flac(duration, AUDIO_RATE),
        "txt": sample["vast_cap"].encode(),
    }


def _one_per_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    first_ok: dict[str, str] = {}
    for r in rows:
        if r["status"] == "ok" and r.get("key"):
            first_ok.setdefault(r["key"], r.get("input") or "")
    out, taken = [], set()
    for r in rows:
        key = r.get("key")
        if key in first_ok and r["status"] in ("ok", "failed"):
            if r["status"] == "ok" and key not in taken:
                taken.add(key)
            else:
                r = {**r, "status": "duplicate", "error_class": "",
                     "message": f"clip {key} is already in this commit (from {first_ok[key]})"}
        out.append(r)
    return out


def _add_member(tf: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))
