"""A live progress bar over committed rows: requests settled, clips/s, counts by status and class."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

import pyarrow as pa


class Progress:
    """Fed with each commit's ledger rows; draws a tqdm bar on stderr when enabled."""

    def __init__(self, total: int, enabled: bool = True):
        self.started = time.time()
        self.requests: set[str] = set()
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="req", file=sys.stderr, mininterval=0.5, dynamic_ncols=True,
                            desc="ingest")

    def update(self, ledger: pa.Table) -> None:
        before = len(self.requests)
        self.requests.update(r for r in ledger["request"].to_pylist() if r)
        for status, cls in zip(ledger["status"].to_pylist(), ledger["error_class"].to_pylist(), strict=True):
            self.status[status] += 1
            if cls:
                self.errors[cls] += 1
        if self.bar is not None:
            self.bar.update(len(self.requests) - before)
            clips = self.status["ok"] + self.status["failed"]
            rate = clips / max(time.time() - self.started, 1e-9)
            top = ",".join(f"{k}={v}" for k, v in self.errors.most_common(3))
            self.bar.set_postfix_str(f"ok={self.status['ok']} failed={self.status['failed']} "
                                     f"{rate:.2f} clips/s {top}".rstrip())

    def counts(self) -> dict[str, Any]:
        """This run's figures: clips settled by status and error class, and the clip rate."""
        seconds = max(time.time() - self.started, 1e-9)
        clips = self.status["ok"] + self.status["failed"]
        return {"settled": dict(self.status), "errors": dict(self.errors),
                "clips_per_s": round(clips / seconds, 3)}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
