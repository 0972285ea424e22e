"""``ingest`` and ``retry``: plan the requests, skip what is settled, run the graph, summarise.

Resume is derived from committed ledger parts only (``vast.shards.ledger``): rerunning the same
command after any interruption plans exactly the requests (and clips) not yet settled.

One owner per clip key, whichever request cuts it (``claim_keys``): span requests are reserved
before whole videos are cut, so a whole video skips the clips a span request owns (in this run or
settled before), a span whose clip is already settled becomes a ``duplicate`` line, and the shard
writer is seeded with the owners it must defend.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from vast.config import ConfigError, from_dict, to_dict
from vast.pipeline.config import IngestConfig
from vast.pipeline.graph import Prepare, run_graph
from vast.pipeline.inputs import REJECT_SCHEMA, REQUEST_SCHEMA, InputFileError, Requests, read_inputs
from vast.pipeline.progress import Progress
from vast.pipeline.scratch import begin_run, configured_work_dir, remove
from vast.pipeline.stage import ERROR_CLASSES, preflight
from vast.shards.card import write_card
from vast.shards.ledger import RESUME_COLUMNS, ResumeState, counted_clips, read_ledger, resume_state
from vast.shards.store import NotAnOutput, OutputStore
from vast.shards.summary import summarize
from vast.shards.writer import ShardWriter


def ingest(inputs: list[str], cfg: IngestConfig) -> dict[str, Any]:
    """Plan ``inputs``, run everything not yet settled in ``cfg.output``; returns the summary."""
    reqs = read_inputs(inputs)
    rejected = reqs.rejected_table()
    invalid = rejected.filter(pc.equal(rejected["status"], "failed"))
    if cfg.strict and invalid.num_rows:
        first = f"{invalid['input'][0].as_py()}: {invalid['message'][0].as_py()}"
        raise InputFileError(f"--strict: {invalid.num_rows} malformed input line(s), nothing was run (first: "
                             f"{first[:300]}); fix them, or drop --strict to record them as invalid_input")
    return run_ingest_requests(cfg, reqs)


def run_ingest_requests(cfg: IngestConfig, reqs: Requests) -> dict[str, Any]:
    """Ingest already-parsed requests (``label`` builds them from a folder)."""
    return _run(cfg, reqs.table(), reqs.rejected_table(), save_plan=True)


def check_classes(classes: list[str]) -> None:
    """Refuse (``ConfigError``) classes ``retry`` cannot re-run: unknown ones and ``invalid_input``."""
    if not classes:
        raise ConfigError("retry needs at least one --class (see `vast-pipeline status DIR`)")
    retryable = [c for c in ERROR_CLASSES if c != "invalid_input"]
    for cls in classes:
        if cls == "invalid_input":
            raise ConfigError("invalid_input is not retryable: fix the input line and run `ingest` again")
        if cls not in ERROR_CLASSES:
            raise ConfigError(f"unknown error class {cls!r}; retryable classes: {', '.join(retryable)}")


def retry(cfg: IngestConfig, classes: list[str]) -> dict[str, Any]:
    """Re-run the clips of ``cfg.output`` whose effective ledger row failed with one of ``classes``.

    A whole video whose own failure row is of ``classes`` stays retryable until every clip of it
    is settled, so a retry that was interrupted is finished by running it again.
    """
    check_classes(classes)
    store = OutputStore(cfg.output, create=False)
    ledger = read_ledger(store)
    failed = ledger.filter(pc.and_(pc.equal(ledger["status"], "failed"),
                                   pc.is_in(ledger["error_class"], pa.array(classes))))
    planned = None
    if store.exists("plan.parquet"):
        with store.open("plan.parquet") as f:
            planned = pq.read_table(f)
    requests, skip = retry_requests(ledger, failed, planned)
    print(f"retrying {failed.num_rows} failed row(s) of class {', '.join(classes)} "
          f"in {requests.num_rows} request(s)", file=sys.stderr)
    return _run(cfg, requests, None, save_plan=False, skip=skip)


def retry_requests(ledger: pa.Table, failed: pa.Table,
                   planned: pa.Table | None = None) -> tuple[pa.Table, dict[str, list[str]]]:
    """The requests that re-create the ``failed`` clips, and the clip keys each must skip.

    A failed span request is re-run as it was. A failed clip of a whole video re-runs the whole
    video, skipping every other settled clip of it; the video's own failure (its fetch failed, maybe
    while re-cutting some clips) re-runs it skipping only its ``ok`` clips. A request found in
    ``planned`` (the saved plan) is taken from there whole, annotations given with the input included.
    """
    retried = set(failed["key"].to_pylist())
    videos = pc.and_(pc.equal(failed["key"], failed["request"]), pc.is_nan(failed["start"]))
    refetched = failed.filter(videos)["request"].combine_chunks()
    own_failures = ledger.filter(pc.and_(pc.and_(pc.equal(ledger["status"], "failed"),
                                                 pc.not_equal(ledger["key"], ledger["request"])),
                                         pc.is_in(ledger["request"], value_set=refetched)))
    retried |= set(own_failures["key"].to_pylist())
    rows: dict[str, dict[str, Any]] = {}
    for r in failed.to_pylist():
        if r["request"] in rows:
            continue
        span = r["key"] == r["request"] and not math.isnan(r["start"])
        rows[r["request"]] = {
            "request": r["request"], "key": r["request"], "input": r["input"], "video_id": r["video_id"],
            "source": r["source"], "start": r["start"] if span else math.nan,
            "end": r["end"] if span else math.nan, "meta": r["meta"]}
    if planned is not None and rows:
        saved = planned.filter(pc.is_in(planned["request"], pa.array(list(rows), pa.string())))
        for r in saved.select([c for c in REQUEST_SCHEMA.names if c in saved.column_names]).to_pylist():
            rows[r["request"]] = {**rows[r["request"]], **r, "key": r["request"]}
    counted = counted_clips(ledger, pa.array(list(rows), pa.string()))
    skip = {req: [k for k in keys if k not in retried] for req, keys in counted.items()}
    return pa.Table.from_pylist(list(rows.values()), schema=REQUEST_SCHEMA), skip


def _run(cfg: IngestConfig, requests: pa.Table, rejected: pa.Table | None, save_plan: bool,
         skip: dict[str, list[str]] | None = None) -> dict[str, Any]:
    def plan(store: OutputStore, state: ResumeState) -> tuple[pa.Table, int]:
        if save_plan:
            store.write_bytes("config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
            store.write_parquet("plan.parquet", requests)
        todo = plan_todo(requests, state) if skip is None else with_pipeline_columns(requests, skip)
        return todo, requests.num_rows

    return run_job(cfg, plan, rejected)


def run_job(cfg: IngestConfig, plan: Callable[[OutputStore, ResumeState], tuple[pa.Table, int]],
            rejected: pa.Table | None = None, prepare: Prepare | None = None) -> dict[str, Any]:
    """Lock the output, drop debris of interrupted commits and runs, plan against the committed ledger,
    commit rejected input lines, run the graph (its temporary files in one run folder, removed at the
    end: ``vast.pipeline.scratch``) and write the summary (and the dataset card)."""
    started = time.time()
    preflight(cfg.stages)  # every model on this machine, before the output is touched or Ray starts
    store = OutputStore(cfg.output)
    lock = store.lock()
    scratch = None
    try:
        removed = store.clean_uncommitted()
        if removed:
            print(f"removed {len(removed)} file(s) of an interrupted commit", file=sys.stderr)
        scratch, stale = begin_run(store, configured_work_dir(cfg.stages))
        if stale:
            print(f"removed {len(stale)} temporary folder(s) of an interrupted run "
                  f"({sum(n for _, n in stale) / 2**20:.1f} MiB)", file=sys.stderr)
        write_card(store)  # the folder loads as a dataset from the first commit on, crash or not
        state = resume_state(read_ledger(store, RESUME_COLUMNS))
        todo, total = plan(store, state)
        keys = claim_keys(todo, state)
        todo = keys.todo
        next_commit = max(store.committed_numbers(), default=-1) + 1
        already = {r: len(k) for r, k in zip(todo["request"].to_pylist(), todo["skip_keys"].to_pylist(),
                                             strict=True) if k} if "skip_keys" in todo.column_names else {}
        progress = Progress(total=todo.num_rows, enabled=cfg.progress, already=already)
        if keys.duplicates.num_rows:
            rejected = keys.duplicates if rejected is None else pa.concat_tables([rejected, keys.duplicates])
        if rejected is not None:
            fresh = rejected.filter(pc.invert(pc.is_in(rejected["input"], state.rejected_inputs)))
            if fresh.num_rows:
                rows = [{**r, "stage": "plan"} for r in fresh.to_pylist()]
                progress.update(ShardWriter(cfg.output).commit(rows, next_commit))
                next_commit += 1
        if cfg.notice:
            print(f"NOTE: {cfg.notice}", file=sys.stderr)
        print(f"{total} request(s): {total - todo.num_rows} already settled, {todo.num_rows} to run",
              file=sys.stderr)
        run_graph(cfg, todo, next_commit, progress.update, prepare, owners=keys.owners, scratch=scratch)
        progress.close()
        summary = summarize(store, run={"seconds": round(time.time() - started, 2), **progress.counts()})
        if cfg.notice:
            summary["notice"] = cfg.notice
        store.write_bytes("summary.json", _json(summary))
        write_card(store, summary)
        return summary
    finally:
        if scratch:
            remove([scratch])
        lock.close()


def plan_todo(requests: pa.Table, state: ResumeState) -> pa.Table:
    """``requests`` minus settled ones, with ``skip_keys`` for partly settled whole videos."""
    todo = requests.filter(pc.invert(pc.is_in(requests["request"], state.done_requests)))
    return with_pipeline_columns(todo, state.partial)


@dataclass
class KeyClaims:
    """What ``claim_keys`` decided: the requests to run, the span lines whose clip another request
    already settled (``duplicate`` rows of ``REJECT_SCHEMA``), and the owners to seed the writer with."""

    todo: pa.Table
    duplicates: pa.Table
    owners: dict[str, tuple[str, str, bool]]


def claim_keys(todo: pa.Table, state: ResumeState) -> KeyClaims:
    """One owner per clip key, whichever request cuts it; span requests are reserved first.

    A span request whose clip a whole video already settled is not run: its line becomes a
    ``duplicate`` row naming the owner. A whole-video request skips (``skip_keys``) every clip key
    of its video that another request owns: settled ones, and the span requests of this run. The
    owners of those videos' keys (settled clips, reserved spans) seed ``ClipOwners``; other keys
    are claimed at the sink as they come.
    """
    settled = state.settled
    needed = {"request", "key", "input", "video_id", "start", "skip_keys"}
    if settled is None or "video_id" not in settled.column_names or not needed <= set(todo.column_names) \
            or todo.num_rows == 0:
        return KeyClaims(todo, REJECT_SCHEMA.empty_table(), {})
    is_span = pc.fill_null(pc.invert(pc.is_nan(todo["start"])), False)
    # clips of whole videos (their key is not their request's): the only keys a span can collide with
    clips = settled.filter(pc.not_equal(settled["key"], settled["request"]))
    hit = pc.and_(is_span, pc.is_in(todo["key"], value_set=clips["key"].combine_chunks()))
    duplicates = _settled_spans(todo.filter(hit), clips)
    todo, is_span = todo.filter(pc.invert(hit)), is_span.filter(pc.invert(hit))

    whole_vids = pc.unique(todo.filter(pc.invert(is_span))["video_id"])
    if len(whole_vids) == 0:
        return KeyClaims(todo, duplicates, {})
    # only the videos a whole-video request cuts can collide: their keys alone seed the writer
    reserved = todo.filter(pc.and_(is_span, pc.is_in(todo["video_id"], value_set=whole_vids)))
    known = settled.filter(pc.is_in(settled["video_id"], value_set=whole_vids))
    owners = {k: (r, i, s == "ok") for k, r, i, s in _rows(known, "key", "request", "input", "status")}
    owners.update({k: (r, i, False) for k, r, i in _rows(reserved, "key", "request", "input")})
    taken: dict[str, list[tuple[str, str]]] = {}  # video id → [(clip key, owner request)]
    for table in (known, reserved):
        for vid, k, r in _rows(table, "video_id", "key", "request"):
            taken.setdefault(vid, []).append((k, r))
    if taken:
        skip_keys = []
        for req, vid, span, skip in zip(todo["request"].to_pylist(), todo["video_id"].to_pylist(),
                                        is_span.to_pylist(), todo["skip_keys"].to_pylist(), strict=True):
            others = [] if span else [k for k, owner in taken.get(vid, ()) if owner != req]
            skip_keys.append(list(dict.fromkeys((skip or []) + others)))
        at = todo.column_names.index("skip_keys")
        todo = todo.set_column(at, "skip_keys", pa.array(skip_keys, pa.list_(pa.string())))
    return KeyClaims(todo, duplicates, owners)


def _settled_spans(spans: pa.Table, clips: pa.Table) -> pa.Table:
    """``duplicate`` rows for span requests whose clip is one of the settled ``clips``."""
    if spans.num_rows == 0:
        return REJECT_SCHEMA.empty_table()
    owners = clips.select(["key", "request", "input"]).rename_columns(["key", "owner_request", "owner_input"])
    owned = spans.select(["input", "key", "request"]).join(owners, "key", use_threads=False)
    n = owned.num_rows
    message = pc.binary_join_element_wise("same clip as ", owned["owner_input"], " (clip ", owned["key"],
                                          " of request ", owned["owner_request"], "), settled already", "")
    return pa.table({"input": owned["input"], "key": owned["key"], "request": owned["request"],
                     "status": pa.array(["duplicate"] * n, pa.string()),
                     "error_class": pa.array([""] * n, pa.string()), "message": message},
                    schema=REJECT_SCHEMA)


def _rows(table: pa.Table, *columns: str) -> Any:
    return zip(*(table[c].to_pylist() for c in columns), strict=True)


def with_pipeline_columns(requests: pa.Table, skip: dict[str, list[str]]) -> pa.Table:
    """Add the columns every pipeline row carries (``vast.pipeline.stage.LEDGER_COLUMNS``)."""
    n = requests.num_rows
    skip_keys = [skip.get(r, []) for r in requests["request"].to_pylist()] if skip else [[]] * n
    extra = {
        "skip_keys": pa.array(skip_keys, pa.list_(pa.string())),
        "n_clips": pa.array(np.ones(n, np.int32)),
        "status": pa.array(np.full(n, "ok", object), pa.string()),
        "error_class": pa.array(np.full(n, "", object), pa.string()),
        "message": pa.array(np.full(n, "", object), pa.string()),
        "stage": pa.array(np.full(n, "", object), pa.string()),
    }
    for name, column in extra.items():
        requests = requests.append_column(name, column)
    return requests


def _json(obj: Any) -> bytes:
    import json

    return (json.dumps(obj, indent=2, default=str) + "\n").encode()


def saved_config(output: str) -> IngestConfig:
    """The config a previous ``ingest`` into ``output`` ran with."""
    store = OutputStore(output, create=False)
    if not store.exists("config.yaml"):
        raise NotAnOutput(f"{output} holds no config.yaml: `retry` needs an output written by "
                          "`vast-pipeline ingest`")
    with store.open("config.yaml") as f:
        return from_dict(IngestConfig, yaml.safe_load(f.read()))
