"""``ingest`` and ``retry``: plan the requests, skip what is settled, run the graph, summarise.

Resume is derived from committed ledger parts only (``vast.shards.ledger``): rerunning the same
command after any interruption plans exactly the requests (and clips) not yet settled.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from vast.config import ConfigError, from_dict, to_dict
from vast.pipeline.config import IngestConfig
from vast.pipeline.graph import Prepare, run_graph
from vast.pipeline.inputs import REQUEST_SCHEMA, Requests, read_inputs
from vast.pipeline.progress import Progress
from vast.pipeline.stage import preflight
from vast.shards.card import write_card
from vast.shards.ledger import RESUME_COLUMNS, ResumeState, read_ledger, resume_state
from vast.shards.store import OutputStore
from vast.shards.summary import summarize
from vast.shards.writer import ShardWriter


def ingest(inputs: list[str], cfg: IngestConfig) -> dict[str, Any]:
    """Plan ``inputs``, run everything not yet settled in ``cfg.output``; returns the summary."""
    reqs = read_inputs(inputs)
    rejected = reqs.rejected_table()
    invalid = rejected.filter(pc.equal(rejected["status"], "failed"))
    if cfg.strict and invalid.num_rows:
        lines = "\n".join(f"  {w}: {m}" for w, m in zip(invalid["input"].to_pylist()[:20],
                                                       invalid["message"].to_pylist()[:20], strict=True))
        raise ConfigError(f"--strict: {invalid.num_rows} malformed input line(s), nothing was run:\n{lines}")
    return run_ingest_requests(cfg, reqs)


def run_ingest_requests(cfg: IngestConfig, reqs: Requests) -> dict[str, Any]:
    """Ingest already-parsed requests (``label`` builds them from a folder)."""
    return _run(cfg, reqs.table(), reqs.rejected_table(), save_plan=True)


def retry(cfg: IngestConfig, classes: list[str]) -> dict[str, Any]:
    """Re-run the clips of ``cfg.output`` whose effective ledger row failed with one of ``classes``."""
    store = OutputStore(cfg.output)
    ledger = read_ledger(store)
    failed = ledger.filter(pc.and_(pc.equal(ledger["status"], "failed"),
                                   pc.is_in(ledger["error_class"], pa.array(classes))))
    failed = failed.filter(pc.not_equal(failed["error_class"], "invalid_input"))  # nothing to re-run
    requests, skip = retry_requests(ledger, failed)
    print(f"retrying {failed.num_rows} clip(s) of class {', '.join(classes)} "
          f"in {requests.num_rows} request(s)", file=sys.stderr)
    return _run(cfg, requests, None, save_plan=False, skip=skip)


def retry_requests(ledger: pa.Table, failed: pa.Table) -> tuple[pa.Table, dict[str, list[str]]]:
    """The requests that re-create the ``failed`` clips, and the clip keys each must skip.

    A failed span request is re-run as it was. A failed clip of a whole video (or the video's own
    failure) re-runs the whole video, skipping every other settled clip of it.
    """
    retried = set(failed["key"].to_pylist())
    rows: dict[str, dict[str, Any]] = {}
    for r in failed.to_pylist():
        if r["request"] in rows:
            continue
        span = r["key"] == r["request"] and not math.isnan(r["start"])
        rows[r["request"]] = {
            "request": r["request"], "key": r["request"], "input": r["input"], "video_id": r["video_id"],
            "source": r["source"], "start": r["start"] if span else math.nan,
            "end": r["end"] if span else math.nan, "meta": r["meta"]}
    settled = ledger.filter(pc.is_in(ledger["request"], pa.array(list(rows), pa.string())))
    skip: dict[str, list[str]] = {}
    for req, key in zip(settled["request"].to_pylist(), settled["key"].to_pylist(), strict=True):
        if key not in retried and key != req:
            skip.setdefault(req, []).append(key)
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
    """Lock the output, drop debris of interrupted commits, plan against the committed ledger,
    commit rejected input lines, run the graph and write the summary (and the dataset card)."""
    started = time.time()
    preflight(cfg.stages)  # every model on this machine, before the output is touched or Ray starts
    store = OutputStore(cfg.output)
    lock = store.lock()
    try:
        removed = store.clean_uncommitted()
        if removed:
            print(f"removed {len(removed)} file(s) of an interrupted commit", file=sys.stderr)
        write_card(store)  # the folder loads as a dataset from the first commit on, crash or not
        state = resume_state(read_ledger(store, RESUME_COLUMNS))
        todo, total = plan(store, state)
        next_commit = max(store.committed_numbers(), default=-1) + 1
        already = {r: len(k) for r, k in zip(todo["request"].to_pylist(), todo["skip_keys"].to_pylist(),
                                             strict=True) if k} if "skip_keys" in todo.column_names else {}
        progress = Progress(total=todo.num_rows, enabled=cfg.progress, already=already)
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
        run_graph(cfg, todo, next_commit, progress.update, prepare)
        progress.close()
        summary = summarize(store, run={"seconds": round(time.time() - started, 2), **progress.counts()})
        if cfg.notice:
            summary["notice"] = cfg.notice
        store.write_bytes("summary.json", _json(summary))
        write_card(store, summary)
        return summary
    finally:
        lock.close()


def plan_todo(requests: pa.Table, state: ResumeState) -> pa.Table:
    """``requests`` minus settled ones, with ``skip_keys`` for partly settled whole videos."""
    todo = requests.filter(pc.invert(pc.is_in(requests["request"], state.done_requests)))
    return with_pipeline_columns(todo, state.partial)


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
    store = OutputStore(output)
    if not store.exists("config.yaml"):
        raise ConfigError(f"{output} holds no config.yaml: was it written by `vast-pipeline ingest`?")
    with store.open("config.yaml") as f:
        return from_dict(IngestConfig, yaml.safe_load(f.read()))
