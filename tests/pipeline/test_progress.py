"""The driver's figures: requests settled (whole videos over several commits) and time per stage."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from vast.pipeline.progress import Progress, StageClock


def ledger(rows: list[tuple[str, str, str, str, int]], times: list[list] | None = None) -> pa.Table:
    request, key, status, cls, n = zip(*rows, strict=True)
    stage_times = [json.dumps(times) if times else ""] + [""] * (len(rows) - 1)
    return pa.table({"request": request, "key": key, "status": status, "error_class": cls,
                     "n_clips": pa.array(n, pa.int32()), "stage_times": stage_times})


def test_whole_videos_settle_with_their_last_clip_and_are_then_forgotten():
    # vid had 3 clips, one committed by an earlier run; span_1 is a span request
    p = Progress(total=3, enabled=False, already={"vid": 1})
    p.update(ledger([("span_1", "span_1", "ok", "", 1), ("vid", "vid_0_5000", "ok", "", 3)]))
    assert p.settled == 1 and p.partial == {"vid": 2}
    p.update(ledger([("vid", "vid_5000_9000", "failed", "decode_error", 3),
                     ("gone", "gone", "failed", "unavailable", 1)]))
    assert p.settled == 3 and p.partial == {}
    counts = p.counts()
    assert counts["settled"] == {"ok": 2, "failed": 2}
    assert counts["errors"] == {"decode_error": 1, "unavailable": 1}


def test_stage_clock_cpu_and_bottleneck_share():
    clock = StageClock()
    # two media workers busy for 4 s each, fetch for 1 s on the same two slots, commit briefly
    clock.add([["fetch", 0.0, 1.0, 0.1, 2.0], ["media", 1.0, 5.0, 3.5, 2.0],
               ["fetch", 0.0, 1.0, 0.1, 2.0], ["media", 1.0, 5.0, 3.6, 2.0], ["commit", 5.0, 5.5, 0.05, 8.0]])
    figures = clock.figures(clips=4)
    assert list(figures) == ["fetch", "media", "commit"]
    assert figures["media"]["cpu_s"] == pytest.approx(7.1)
    assert figures["media"]["cpu_s_per_clip"] == pytest.approx(7.1 / 4, abs=1e-4)
    assert figures["media"]["busy_s"] == pytest.approx(8.0)
    # buckets of one second: fetch in [0, 1), media in [1, 5), commit alone in [5, 6)
    assert figures["fetch"]["bottleneck_share"] == pytest.approx(1 / 6, abs=1e-3)
    assert figures["media"]["bottleneck_share"] == pytest.approx(4 / 6, abs=1e-3)
    assert figures["commit"]["bottleneck_share"] == pytest.approx(1 / 6, abs=1e-3)


def test_progress_reads_stage_times_from_the_ledger_rows():
    p = Progress(total=1, enabled=False)
    p.update(ledger([("a", "a", "ok", "", 1)], [["media", 0.0, 2.0, 1.5, 1.0]]))
    stages = p.counts()["stages"]
    assert stages["media"]["cpu_s"] == 1.5 and stages["media"]["bottleneck_share"] == 1.0


def test_stage_clock_memory_stays_bounded_over_a_long_run(monkeypatch):
    import vast.pipeline.progress as progress

    monkeypatch.setattr(progress, "MAX_BUCKETS", 8)
    clock = StageClock()
    for k in range(100):  # 100 s of wall time: media busy on even seconds, fetch on odd ones
        clock.add([["media" if k % 2 == 0 else "fetch", k, k + 1.0, 0.5, 1.0]])
    assert len(clock.load) <= 8 and clock.bucket_s == 16.0
    figures = clock.figures(clips=100)
    assert figures["media"]["cpu_s"] == figures["fetch"]["cpu_s"] == 25.0
    assert figures["media"]["busy_s"] == 50.0
    assert figures["media"]["bottleneck_share"] + figures["fetch"]["bottleneck_share"] == pytest.approx(1.0)
