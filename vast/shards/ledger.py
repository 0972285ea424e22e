"""The ledger: the terminal state of every input line and clip, and resume derived from it.

Each commit writes ``ledger/part-NNNNNN.parquet`` with one row per clip it settles — ``ok`` (the
sample is in ``shard-NNNNNN.tar``), ``failed`` (error class + the original message), or
``duplicate``. Nothing is ever rewritten: a retry commits newer rows, and the *effective* ledger
keeps, per clip key, the row of the latest commit.

One owner per clip key: a ``duplicate`` row whose key equals its request is an input line that
repeats another one (or names a clip another request already settled); one whose key differs is a
clip of a whole video that another request owns, which the whole video counts as settled once the
owner has settled it. ``ClipOwners`` is the shard writer's defence: nothing commits a key twice.

A whole-video request that failed before it was cut has one row keyed by the request; it stays in
the effective ledger (so ``retry`` finds it by class) until every clip of the request is settled.
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


class ClipOwners:
    """Which request owns each clip key of one output: the shard writer's check before a commit.

    Seeded by the plan (settled clips with their owner, and the span requests it reserved), then
    every row reaching the sink claims its key. A row for a key another request owns becomes a
    ``duplicate`` row naming the owner, never a second tar member; a row for a key its own request
    already holds ``ok`` is dropped (it is settled). ``ok`` and ``failed`` rows of the owner pass
    (a retry supersedes a failure).
    """

    KEEP, DROP, DUPLICATE = "keep", "drop", "duplicate"

    def __init__(self, owners: dict[str, tuple[str, str, bool]] | None = None):
        # key → (request, input line, an ok row is committed or on its way)
        self.owners = dict(owners or {})

    def verdicts(self, rows: list[tuple[str, str, str, str]]) -> list[tuple[str, str]]:
        """Per row ``(key, request, input, status)``, in order: ``(KEEP|DROP|DUPLICATE, message)``."""
        out = []
        for key, request, input_, status in rows:
            owner = self.owners.get(key) if key else None
            if status not in ("ok", "failed", "duplicate") or not key:
                out.append((self.KEEP, ""))
            elif owner is None and status == "duplicate":
                out.append((self.DUPLICATE, f"clip {key} is settled already (committed before, or cut by "
                                            "another request)"))
            elif owner is None:
                self.owners[key] = (request, input_, status == "ok")
                out.append((self.KEEP, ""))
            elif owner[0] != request:
                out.append((self.DUPLICATE, f"clip {key} belongs to request {owner[0]} ({owner[1]})"))
            elif status == "duplicate" or owner[2]:
                out.append((self.DROP, ""))  # its own clip, settled already
            else:
                self.owners[key] = (request, input_, status == "ok")
                out.append((self.KEEP, ""))
        return out


def apply_verdicts(rows: list[dict[str, Any]], verdicts: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """``rows`` as ``ClipOwners.verdicts`` settled them: kept, dropped, or turned into duplicates."""
    out = []
    for row, (verdict, message) in zip(rows, verdicts, strict=True):
        if verdict == ClipOwners.DUPLICATE:
            out.append({**row, "status": "duplicate", "error_class": "", "message": message})
        elif verdict == ClipOwners.KEEP:
            out.append(row)
    return out


# What resume needs: reading only these keeps a million-row ledger small in memory.
RESUME_COLUMNS = ("key", "request", "input", "video_id", "status", "error_class", "n_clips", "commit")


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
    """Per clip key, the latest ``ok``/``failed`` row; ``duplicate`` rows once per (input line, key).

    A whole-video request's own failure row is dropped once all its clips are settled by a later
    commit; while some are missing it stays, so ``retry --class`` still finds the request.
    """
    if raw.num_rows == 0:
        return raw
    raw = raw.append_column("_i", pa.array(np.arange(raw.num_rows, dtype=np.int64)))
    settled = raw.filter(pc.is_in(raw["status"], pa.array(["ok", "failed"])))
    # invalid input lines have no key: they are one row per input line
    keyed = settled.filter(pc.not_equal(settled["key"], ""))
    unkeyed = settled.filter(pc.equal(settled["key"], ""))
    keyed = raw.take(keyed.group_by("key", use_threads=False).aggregate([("_i", "max")])["_i_max"])
    dups = _last_per(raw, raw.filter(pc.equal(raw["status"], "duplicate")), ["input", "key"])
    is_req = pc.equal(keyed["key"], keyed["request"])
    clips, req_rows = keyed.filter(pc.invert(is_req)), keyed.filter(is_req)
    if req_rows.num_rows and (clips.num_rows or dups.num_rows):
        progress = clip_progress(clips, dups, keyed["key"])
        joined = req_rows.join(progress, "request", join_type="left outer", use_threads=False)
        superseded = pc.fill_null(pc.and_(pc.greater_equal(joined["clips"], joined["n_clips_max"]),
                                          pc.greater(joined["newest"], joined["commit"])), False)
        req_rows = joined.filter(pc.invert(superseded)).select(raw.column_names)
    out = pa.concat_tables([clips, req_rows, _last_per(raw, unkeyed, ["input"]), dups])
    return out.sort_by([("commit", "ascending"), ("_i", "ascending")]).drop_columns(["_i"])


def _last_per(raw: pa.Table, rows: pa.Table, columns: list[str]) -> pa.Table:
    if rows.num_rows == 0:
        return rows
    return raw.take(rows.group_by(columns, use_threads=False).aggregate([("_i", "max")])["_i_max"])


def clip_progress(clips: pa.Table, dups: pa.Table, settled_keys: pa.ChunkedArray | pa.Array) -> pa.Table:
    """Per request that has clips: distinct clips settled (``clips``), clips it was cut into
    (``n_clips_max``) and its newest commit (``newest``).

    ``clips`` are ``ok``/``failed`` rows whose key is not their request; a ``duplicate`` row counts
    for its request when its key is another request's clip that is settled (``settled_keys``).
    """
    columns = ["request", "key", "n_clips", "commit"]
    claimed = dups.filter(pc.and_(pc.not_equal(dups["key"], dups["request"]),
                                  pc.is_in(dups["key"], value_set=_array(settled_keys))))
    both = pa.concat_tables([clips.select(columns), claimed.select(columns)])
    per = both.group_by("request", use_threads=False).aggregate(
        [("key", "count_distinct"), ("n_clips", "max"), ("commit", "max")])
    return per.rename_columns({"key_count_distinct": "clips", "commit_max": "newest"})


def _array(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def read_ledger(store: OutputStore, columns: tuple[str, ...] | None = None) -> pa.Table:
    """The effective ledger of an output directory: ``columns`` plus the ``RESUME_COLUMNS`` that deciding
    it needs (or every column)."""
    if columns is not None:
        columns = tuple(dict.fromkeys([*columns, *RESUME_COLUMNS]))
    return effective(read_raw(store, columns))


@dataclass
class ResumeState:
    """What is settled: whole requests, clip keys of partly settled requests, rejected lines, and
    every settled clip with its owner (``key``, ``request``, ``input``, ``video_id``, ``status``)."""

    done_requests: pa.Array
    partial: dict[str, list[str]]
    rejected_inputs: pa.Array
    settled: pa.Table | None = None


def _settled_parts(ledger: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table, pa.Table]:
    """(every settled keyed row, the request-level rows among them, the clip rows, the duplicates)."""
    status, key = ledger["status"], ledger["key"]
    keyed = ledger.filter(pc.and_(pc.is_in(status, pa.array(["ok", "failed"])), pc.not_equal(key, "")))
    is_req = pc.equal(keyed["key"], keyed["request"])
    dups = ledger.filter(pc.equal(status, "duplicate"))
    return keyed, keyed.filter(is_req), keyed.filter(pc.invert(is_req)), dups


def resume_state(ledger: pa.Table) -> ResumeState:
    """A request is done when as many of its clips are settled as it was cut into, or when its one
    row (a span, or a whole video that failed before it was cut) is settled."""
    status, key, request = ledger["status"], ledger["key"], ledger["request"]
    line_dup = pc.and_(pc.equal(status, "duplicate"), pc.or_(pc.equal(key, request), pc.equal(key, "")))
    rejected = ledger.filter(pc.or_(line_dup, pc.equal(ledger["error_class"], "invalid_input")))["input"]
    rejected = _array(rejected)
    keyed, req_rows, clips, dups = _settled_parts(ledger)
    owners = keyed.select([c for c in OWNER_COLUMNS if c in keyed.column_names])
    if keyed.num_rows == 0:
        return ResumeState(pa.array([], pa.string()), {}, rejected, owners)
    progress = clip_progress(clips, dups, keyed["key"])
    full = pc.greater_equal(progress["clips"], progress["n_clips_max"])
    # a request with no clip rows is settled by its own row
    alone = req_rows.filter(pc.invert(pc.is_in(req_rows["request"], value_set=progress["request"])))
    done = pa.concat_arrays([_array(progress.filter(full)["request"]), _array(alone["request"])])
    partial_reqs = _array(progress.filter(pc.invert(full))["request"])
    partial = counted_clips(ledger, partial_reqs) if len(partial_reqs) else {}
    return ResumeState(done, partial, rejected, owners)


def counted_clips(ledger: pa.Table, requests: pa.Array) -> dict[str, list[str]]:
    """Per request of ``requests``: the clip keys settled for it — its own ``ok``/``failed`` clips,
    and the settled clips of other requests that it skipped (its ``duplicate`` rows)."""
    keyed, _, clips, dups = _settled_parts(ledger)
    claimed = dups.filter(pc.and_(pc.not_equal(dups["key"], dups["request"]),
                                  pc.is_in(dups["key"], value_set=_array(keyed["key"]))))
    rows = pa.concat_tables([clips.select(["request", "key"]), claimed.select(["request", "key"])])
    rows = rows.filter(pc.is_in(rows["request"], value_set=requests))
    out: dict[str, list[str]] = {}
    for req, k in zip(rows["request"].to_pylist(), rows["key"].to_pylist(), strict=True):
        keys = out.setdefault(req, [])
        if k not in keys:
            keys.append(k)
    return out


# What planning needs to know about each settled clip: who owns it.
OWNER_COLUMNS = ("key", "request", "input", "video_id", "status")


def pending_requests(planned: pa.Table, ledger: pa.Table) -> pa.Table:
    """The ``planned`` requests (``request``, ``input``) not settled yet, with how far each got:
    ``clips`` settled of ``n_clips`` (null when none is), and the ``error_class`` of the request's
    own failure row when it has one (then ``retry --class`` finishes it)."""
    state = resume_state(ledger)
    keyed, req_rows, clips, dups = _settled_parts(ledger)
    # a span request whose clip another request settled is not pending: its line is a duplicate
    finished = pc.or_(pc.is_in(planned["request"], value_set=state.done_requests),
                      pc.is_in(planned["request"], value_set=_array(clips["key"])))
    todo = planned.filter(pc.invert(finished)).select(["request", "input"])
    progress = clip_progress(clips, dups, keyed["key"]).select(["request", "clips", "n_clips_max"])
    failures = req_rows.filter(pc.equal(req_rows["status"], "failed")).select(["request", "error_class"])
    out = todo.join(progress, "request", join_type="left outer", use_threads=False)
    out = out.join(failures, "request", join_type="left outer", use_threads=False)
    return out.rename_columns({"n_clips_max": "n_clips"}).select(
        ["request", "input", "clips", "n_clips", "error_class"]).sort_by("input")
