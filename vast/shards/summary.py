"""Dataset totals of an output directory, from its effective ledger and committed shards."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vast.shards.store import COMMIT_RE, OutputStore


def summarize(store: OutputStore, run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts by status and error class, hours of video, bytes, shards; ``run`` adds this run's figures."""
    from vast.shards.ledger import read_ledger

    ledger = read_ledger(store)
    status = _counts(ledger["status"])
    errors = _counts(ledger.filter(pc.equal(ledger["status"], "failed"))["error_class"])
    ok = ledger.filter(pc.equal(ledger["status"], "ok"))
    tars = [n for n in store.ls() if n.endswith(".tar") and COMMIT_RE.search(n)]
    dups = ledger.filter(pc.equal(ledger["status"], "duplicate"))
    # a duplicate keyed by a clip of another request is a clip a whole video left to its owner
    shared = int(pc.sum(pc.and_(pc.not_equal(dups["key"], dups["request"]), pc.not_equal(dups["key"], "")))
                 .as_py() or 0)
    summary: dict[str, Any] = {
        "output": store.url,
        "clips": {"ok": status.get("ok", 0), "failed": status.get("failed", 0)},
        "duplicate_lines": status.get("duplicate", 0) - shared,
        "clips_owned_elsewhere": shared,
        "errors": errors,
        "hours": round(float(pc.sum(ok["duration"]).as_py() or 0.0) / 3600, 4),
        "bytes": sum(store.size(n) for n in tars),
        "shards": len(tars),
        "requests": len(set(ledger["request"].to_pylist()) - {""}),
    }
    if store.exists("plan.parquet"):
        import pyarrow.parquet as pq

        from vast.shards.ledger import pending_requests

        with store.open("plan.parquet") as f:
            planned = pq.read_table(f, columns=["request", "input"])
        summary["planned_requests"] = planned.num_rows
        summary["pending_requests"] = pending_requests(planned, ledger).num_rows
    if run is not None:
        summary["run"] = run
    return summary


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    if len(column) == 0:
        return {}
    vc = pc.value_counts(column)
    return dict(sorted(((v["values"].as_py(), v["counts"].as_py()) for v in vc), key=lambda kv: -kv[1]))


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a few human lines."""
    gib = summary["bytes"] / 2**30
    lines = [
        f"output   {summary['output']}",
        f"clips    ok {summary['clips']['ok']}   failed {summary['clips']['failed']}   "
        f"duplicate lines {summary['duplicate_lines']}"
        + (f"   owned by another request {summary['clips_owned_elsewhere']}"
           if summary.get("clips_owned_elsewhere") else ""),
        f"video    {summary['hours']:.3f} h in {summary['shards']} shard(s), {gib:.3f} GiB",
    ]
    if "planned_requests" in summary:
        lines.append(f"requests {summary['planned_requests']} planned, {summary['pending_requests']} pending")
    if summary["errors"]:
        lines.append("failures " + "   ".join(f"{k} {v}" for k, v in summary["errors"].items()))
    if "run" in summary:
        run = summary["run"]
        lines.append(f"this run {run['seconds']:.1f} s, {run['clips_per_s']:.2f} clips/s")
        if run.get("stages"):
            lines.append(f"CPU      {run['cpu_s_per_clip']:.3f} s per clip in the stages and the driver "
                         f"({run['driver_cpu_s']:.1f} s); by stage (bottleneck: share of the wall time):")
            lines += [f"  {name:14s} {st['cpu_s']:8.1f} s   {st['cpu_s_per_clip']:.3f} s/clip   "
                      f"bottleneck {100 * st['bottleneck_share']:.0f}%" for name, st in run["stages"].items()]
    if summary.get("notice"):
        lines.append(f"NOTE     {summary['notice']}")
    return "\n".join(lines)
