"""The driver's view of a run: a live progress bar over committed rows, and where the time went.

``Progress`` is fed each commit's ledger rows. It counts clips by status and error class, and
requests settled; it keeps only the requests still partly settled (a whole video whose clips arrive
over several commits), so its memory does not grow with the run. The rows also carry each stage's
time records from the workers (``graph.TIMES``: stage, start, end, CPU seconds, parallel slots),
which ``StageClock`` turns into CPU seconds per stage and per clip, and the share of the run's wall
time each stage was the bottleneck — the figures to size a cluster by.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa

# Stage time records are folded into buckets of wall time, one second wide at first; past this many
# buckets, neighbours are merged (the width doubles), so a run of days keeps a few thousand.
MAX_BUCKETS = 4096


class StageClock:
    """Per-stage CPU and busy time, and per wall-time bucket which stage was the bottleneck.

    A stage's load in a bucket is its busy seconds there over its parallel slots (workers or
    actors it can run on at once); the stage with the highest load in a bucket is that bucket's
    bottleneck. Memory is one small dict per bucket of wall time (at most ``MAX_BUCKETS``), not per clip.
    """

    def __init__(self) -> None:
        self.bucket_s = 1.0
        self.cpu: Counter[str] = Counter()
        self.busy: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.load: dict[int, Counter[str]] = defaultdict(Counter)
        self.order: dict[str, int] = {}

    def add(self, records: list[list[Any]]) -> None:
        """Fold in time records ``[stage, start, end, cpu_s, slots]``."""
        for name, start, end, cpu, slots in records:
            self.order.setdefault(name, len(self.order))
            self.cpu[name] += cpu
            self.busy[name] += max(0.0, end - start)
            self.calls[name] += 1
            t = start
            while t < end:  # spread the busy time over the buckets it spans
                b = int(t // self.bucket_s)
                upto = min(end, (b + 1) * self.bucket_s)
                self.load[b][name] += (upto - t) / max(slots, 1e-9)
                t = upto
            if len(self.load) > MAX_BUCKETS:
                self._coarsen()

    def _coarsen(self) -> None:
        """Merge each pair of neighbouring buckets: twice the width, half the buckets."""
        merged: dict[int, Counter[str]] = defaultdict(Counter)
        for b, load in self.load.items():
            merged[b // 2].update(load)
        self.load, self.bucket_s = merged, self.bucket_s * 2

    def figures(self, clips: int) -> dict[str, dict[str, float]]:
        """Per stage: CPU s, CPU s per clip, busy s, and the share of wall time it was the bottleneck."""
        bottleneck: Counter[str] = Counter()
        for load in self.load.values():
            if load:
                bottleneck[max(load, key=lambda k: (load[k], -self.order[k]))] += 1
        buckets = max(1, sum(bottleneck.values()))
        return {name: {"cpu_s": round(self.cpu[name], 2),
                       "cpu_s_per_clip": round(self.cpu[name] / clips, 4) if clips else 0.0,
                       "busy_s": round(self.busy[name], 2),
                       "bottleneck_share": round(bottleneck[name] / buckets, 3)}
                for name in sorted(self.order, key=self.order.__getitem__)}


class Progress:
    """Fed with each commit's ledger rows; draws a tqdm bar on stderr when enabled."""

    def __init__(self, total: int, enabled: bool = True, already: dict[str, int] | None = None):
        """``already``: clips committed by earlier runs of the partly settled whole-video requests."""
        self.started = time.time()
        self.cpu0 = _own_cpu_s()
        self.total = total
        self.settled = 0
        # whole-video request → its clips settled so far (only requests still in progress)
        self.partial: dict[str, int] = dict(already or {})
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.clock = StageClock()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="req", file=sys.stderr, mininterval=0.5, dynamic_ncols=True,
                            desc="ingest")

    def update(self, ledger: pa.Table) -> None:
        before = self.settled
        columns = ("request", "key", "status", "error_class", "n_clips")
        rows = zip(*(ledger[c].to_pylist() if c in ledger.column_names else [None] * ledger.num_rows
                     for c in columns), strict=True)
        for request, key, status, cls, n_clips in rows:
            self.status[status] += 1
            if cls:
                self.errors[cls] += 1
            if not request:
                continue
            if key == request or status == "duplicate" or not n_clips or n_clips <= 1:
                self.settled += 1
                continue
            # a clip of a whole video: the request is settled with its last clip of this run
            done = self.partial.get(request, 0) + 1
            if done >= n_clips:
                self.partial.pop(request, None)
                self.settled += 1
            else:
                self.partial[request] = done
        if "stage_times" in ledger.column_names:
            for value in ledger["stage_times"].to_pylist():
                if value:
                    self.clock.add(json.loads(value))
        if self.bar is not None:
            self.bar.update(min(self.settled, self.total) - min(before, self.total))
            clips = self.status["ok"] + self.status["failed"]
            rate = clips / max(time.time() - self.started, 1e-9)
            top = ",".join(f"{k}={v}" for k, v in self.errors.most_common(3))
            self.bar.set_postfix_str(f"ok={self.status['ok']} failed={self.status['failed']} "
                                     f"{rate:.2f} clips/s {top}".rstrip())

    def counts(self) -> dict[str, Any]:
        """This run's figures: clips settled by status and error class, the clip rate, and CPU seconds
        per stage (and per clip) with the share of wall time each stage was the bottleneck."""
        seconds = max(time.time() - self.started, 1e-9)
        clips = self.status["ok"] + self.status["failed"]
        stages = self.clock.figures(clips)
        driver = _own_cpu_s() - self.cpu0
        stage_cpu = sum(s["cpu_s"] for s in stages.values())
        return {"settled": dict(self.status), "errors": dict(self.errors),
                "clips_per_s": round(clips / seconds, 3), "stages": stages,
                "driver_cpu_s": round(driver, 2),
                "cpu_s_per_clip": round((stage_cpu + driver) / clips, 4) if clips else 0.0}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _own_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
