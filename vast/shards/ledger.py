"""The ledger: the terminal state of every input line and clip, and resume derived from it.

Each commit writes ``ledger/part-NNNNNN.parquet`` with one row per clip it settles — ``ok`` (the
sample is in ``shard-NNNNNN.tar``), ``failed`` (error class + the original message), or
``duplicate`` (an input line repeating an earlier one). Nothing is ever rewritten: a retry
commits newer rows, and the *effective* ledger keeps, per clip key, the row of the latest commit.
A whole-video request that failed before it was cut has one row keyed by the request; once a
later commit holds clips of that request, that row is superseded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vast.shards.store import COMMIT_RE, OutputStore

LEDGER_SCHEMA = pa.schema([
    ("key", pa.string()), ("request", pa.string()), ("input", pa.string()), ("video_id", pa.string()),
    ("source", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("n_clips", pa.int32()),
    ("status", pa.string()), ("error_class", pa.string()), ("message", pa.string()), ("stage", pa.string()),
    ("shard", pa.string()), ("duration", pa.float64()), ("bytes", pa.int64()), ("meta", pa.string()),
    ("commit", pa.int64()), ("time", pa.float64()),
])


def ledger_row(row: dict[str, Any], commit: int, shard: str = "", duration: float = math.nan,
               nbytes: int = 0) -> dict[str, Any]:
    """The ledger row for a pipeline row (ok or failed) settled by ``commit``."""
    return {
        "key": row.get("key") or "", "request": row.get("request") or "", "input": row.get("input") or "",
        "video_id": row.get("video_id") or "", "source": row.get("source") or "",
        "start": _float(row.get("start")), "end": _float(row.get("end")),
        "n_clips": int(row.get("n_clips") or 1), "status": row.get("status") or "failed",
        "error_class": row.get("error_class") or "", "message": str(row.get("message") or ""),
        "stage": row.get("stage") or "", "shard": shard, "duration": duration, "bytes": nbytes,
        "meta": row.get("meta") or "{}", "commit": commit, "time": time.time(),
    }


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def ledger_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA)


# What resume needs: reading only these keeps a million-row ledger small in memory.
RESUME_COLUMNS = ("key", "request", "input", "status", "error_class", "n_clips", "commit")


def read_raw(store: OutputStore, columns: tuple[str, ...] | None = None) -> pa.Table:
    """Every committed ledger row (``columns`` only, if given), in commit order."""
    schema = LEDGER_SCHEMA if columns is None else pa.schema([LEDGER_SCHEMA.field(c) for c in columns])
    names = [n for n in store.ls("ledger") if COMMIT_RE.search(n)]
    if not names:
        return schema.empty_table()
    tables = []
    for name in names:
        with store.open(name) as f:
            tables.append(pq.read_table(f, columns=list(schema.names), schema=LEDGER_SCHEMA))
    return pa.concat_tables(tables).sort_by("commit")


def effective(raw: pa.Table) -> pa.Table:
    """Per clip key, the latest row; request-level failures superseded by later clips dropped.

    ``duplicate`` rows are kept once per input line (they account for lines, not clips).
    """
    if raw.num_rows == 0:
        return raw
    raw = raw.append_column("_i", pa.array(np.arange(raw.num_rows, dtype=np.int64)))
    settled = raw.filter(pc.is_in(raw["status"], pa.array(["ok", "failed"])))
    # invalid input lines have no key: they are one row per input line
    keyed = settled.filter(pc.not_equal(settled["key"], ""))
    unkeyed = settled.filter(pc.equal(settled["key"], ""))
    last = keyed.group_by("key").aggregate([("_i", "max")])
    keyed = raw.take(last["_i_max"])
    # a whole-video request's own failure row is superseded by any later clip of that request
    is_req = pc.equal(keyed["key"], keyed["request"])
    clips = keyed.filter(pc.invert(is_req))
    if clips.num_rows:
        newest_clip = clips.group_by("request").aggregate([("commit", "max")])
        req_rows = keyed.filter(is_req).join(newest_clip, "request", join_type="left outer")
        later = pc.fill_null(pc.greater(req_rows["commit_max"], req_rows["commit"]), False)
        req_rows = req_rows.filter(pc.invert(later)).drop_columns(["commit_max"])
        keyed = pa.concat_tables([clips, req_rows.select(clips.column_names)])
    unkeyed = _last_per(raw, unkeyed, "input")
    dups = _last_per(raw, raw.filter(pc.equal(raw["status"], "duplicate")), "input")
    out = pa.concat_tables([keyed.select(raw.column_names), unkeyed, dups])
    return out.sort_by([("commit", "ascending"), ("_i", "ascending")]).drop_columns(["_i"])


def _last_per(raw: pa.Table, rows: pa.Table, column: str) -> pa.Table:
    if rows.num_rows == 0:
        return rows
    return raw.take(rows.group_by(column).aggregate([("_i", "max")])["_i_max"])


def read_ledger(store: OutputStore, columns: tuple[str, ...] | None = None) -> pa.Table:
    """The effective ledger of an output directory (``columns`` ⊇ ``RESUME_COLUMNS``, or all)."""
    return effective(read_raw(store, columns))


@dataclass
class ResumeState:
    """What is settled: whole requests, clip keys of partly settled requests, and rejected lines."""

    done_requests: pa.Array
    partial: dict[str, list[str]]
    rejected_inputs: pa.Array


def resume_state(ledger: pa.Table) -> ResumeState:
    """A request is done when as many of its clips are settled as it was cut into."""
    settled = ledger.filter(pc.and_(pc.is_in(ledger["status"], pa.array(["ok", "failed"])),
                                    pc.not_equal(ledger["request"], "")))
    rejected = ledger.filter(pc.or_(pc.equal(ledger["status"], "duplicate"),
                                    pc.equal(ledger["error_class"], "invalid_input")))["input"]
    if settled.num_rows == 0:
        return ResumeState(pa.array([], pa.string()), {}, rejected.combine_chunks())
    per = settled.group_by("request").aggregate([("key", "count"), ("n_clips", "max")])
    full = pc.greater_equal(per["key_count"], per["n_clips_max"])
    done = per.filter(full)["request"]
    partial_reqs = per.filter(pc.invert(full))["request"]
    partial: dict[str, list[str]] = {}
    if len(partial_reqs):
        rows = settled.filter(pc.is_in(settled["request"], partial_reqs)).select(["request", "key"])
        for req, key in zip(rows["request"].to_pylist(), rows["key"].to_pylist(), strict=True):
            partial.setdefault(req, []).append(key)
    return ResumeState(done.combine_chunks(), partial, rejected.combine_chunks())
