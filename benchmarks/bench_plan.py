"""Planning and resume at scale: parse N input lines, then filter them against N settled clips.

Prints wall time and peak RSS for (1) planning a fresh run and (2) resuming when every request is
already in the ledger (the worst case of a rerun). DESIGN target: 1M lines, each under 60 s and
2 GiB on one core.

    python benchmarks/bench_plan.py --lines 1000000
"""

from __future__ import annotations

import argparse
import random
import resource
import string
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from vast.pipeline.ingest import claim_keys, plan_todo
from vast.pipeline.inputs import read_inputs
from vast.shards.ledger import LEDGER_SCHEMA, RESUME_COLUMNS, ResumeState, read_ledger, resume_state
from vast.shards.store import OutputStore
from vast.shards.writer import ShardWriter


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_ids(path: Path, n: int) -> None:
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "-_"
    with open(path, "w") as f:
        for i in range(n):
            vid = "".join(rng.choice(alphabet) for _ in range(11))
            start = rng.randint(0, 3000)
            f.write(f"{vid} {start} {start + rng.randint(5, 30)}\n" if i % 4 else f"{vid}\n")


def settle_everything(output: str, requests: pa.Table, part_rows: int) -> None:
    """Commit every request as an ok ledger row, in parts the size a real run writes."""
    store = ShardWriter(output).store
    n = requests.num_rows
    for number, lo in enumerate(range(0, n, part_rows)):
        chunk = requests.slice(lo, part_rows)
        m = chunk.num_rows
        cols = {name: chunk[name] for name in ("key", "request", "input", "video_id", "source", "start",
                                                "end", "meta")}
        table = pa.table({
            **cols, "n_clips": pa.array([1] * m, pa.int32()), "status": pa.array(["ok"] * m),
            "error_class": pa.array([""] * m), "message": pa.array([""] * m), "stage": pa.array([""] * m),
            "shard": pa.array([f"shard-{number:06d}.tar"] * m), "duration": pa.array([10.0] * m),
            "bytes": pa.array([1] * m, pa.int64()), "commit": pa.array([number] * m, pa.int64()),
            "time": pa.array([0.0] * m),
        }).select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA)
        store.write_parquet(f"ledger/part-{number:06d}.parquet", table)


def plan_once(ids: Path, output: str) -> tuple[float, pa.Table, pa.Table, ResumeState, int]:
    """What ``ingest`` does before Ray starts: parse, read the ledger, filter. Returns its seconds."""
    t0 = time.perf_counter()
    reqs = read_inputs([ids])
    requests = reqs.table()
    state = resume_state(read_ledger(OutputStore(output), RESUME_COLUMNS))
    todo = claim_keys(plan_todo(requests, state), state).todo
    return time.perf_counter() - t0, requests, todo, state, reqs.rejected_table().num_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--part-rows", type=int, default=1000, help="ledger rows per commit (samples_per_shard)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.txt"
        write_ids(ids, args.lines)
        output = str(Path(tmp) / "out")
        rss0 = peak_rss_mib()

        fresh_s, requests, todo, state, rejected = plan_once(ids, output)
        print(f"plan    {args.lines:>9,} lines → {todo.num_rows:,} to run, {rejected:,} rejected: "
              f"{fresh_s:6.2f} s, peak RSS {peak_rss_mib():,.0f} MiB")

        settle_everything(output, requests, args.part_rows)
        del todo, requests, state
        resume_s, _, todo, state, _ = plan_once(ids, output)
        print(f"resume  {args.lines:>9,} lines against {len(state.done_requests):,} settled → "
              f"{todo.num_rows:,} to run: {resume_s:6.2f} s, peak RSS {peak_rss_mib():,.0f} MiB "
              f"(process baseline {rss0:,.0f} MiB)")
        assert todo.num_rows == 0, "every settled request must be filtered out"
        target = "met" if max(fresh_s, resume_s) < 60 and peak_rss_mib() < 2048 else "MISSED"
        print(f"target (< 60 s and < 2 GiB each): {target}")


if __name__ == "__main__":
    main()
