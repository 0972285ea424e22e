"""End to end: a mixed ids file through real Ray, yt-dlp, ffmpeg and decord into WebDataset shards."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from vast.cli import main
from vast.pipeline.config import load_config
from vast.pipeline.ingest import ingest
from vast.shards.ledger import read_ledger
from vast.shards.store import OutputStore

BIN = Path(sys.executable).parent
FAST_FETCH = {"stages.fetch.options.retries": 1, "stages.fetch.options.backoff_s": 0.01,
              "stages.fetch.options.backoff_max_s": 0.02}


def settled_keys(output: str) -> Counter:
    ledger = read_ledger(OutputStore(output))
    rows = ledger.filter(pc.is_in(ledger["status"], pc.cast(["ok", "failed"], "string"))).to_pylist()
    return Counter(r["key"] or r["input"] for r in rows)


def tar_samples(output: str) -> dict[str, dict]:
    urls = sorted(str(p) for p in Path(output).glob("shard-*.tar"))
    samples = {}
    for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        assert s["__key__"] not in samples, f"{s['__key__']} appears twice across shards"
        samples[s["__key__"]] = s
    return samples


def assert_exactly_once(output: str, input_lines: set[str]) -> None:
    """Every input line accounted for; every clip key once; tars hold exactly the ok clips."""
    ledger = read_ledger(OutputStore(output))
    assert set(ledger["input"].to_pylist()) == input_lines
    counts = settled_keys(output)
    assert counts and max(counts.values()) == 1
    ok = set(ledger.filter(pc.equal(ledger["status"], "ok"))["key"].to_pylist())
    assert set(tar_samples(output)) == ok


def lines_of(ids: Path) -> set[str]:
    return {f"{ids}:{n}" for n, line in enumerate(ids.read_text().splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")}


def test_mixed_ids_file_to_shards_exactly_once(tmp_path, media_root, http_server):
    http_server.fail_always("limited.mp4", 429)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join([
        "# every line form",
        f"{http_server.url('speech.mp4')} 1 6.5",
        f"{http_server.url('scenes.mp4')}",
        f"{media_root / 'tone.mp4'} 00:00:01.000 00:00:07",
        f"file://{media_root / 'silent.mp4'}",
        f"{http_server.url('gone.mp4')} 0 5",
        f"{http_server.url('limited.mp4')} 0 5",
        f"{media_root / 'corrupt.mp4'} 0 3",
        f"{media_root / 'audio_only.m4a'}",
        "not a video!",
        f"{media_root / 'tone.mp4'} 7 1",
        f"{media_root / 'tone.mp4'} 1 7",
    ]) + "\n")
    output = str(tmp_path / "out")
    cfg = load_config("tiny", {"output": output, "progress": False, **FAST_FETCH})
    summary = ingest([str(ids)], cfg)

    ledger = read_ledger(OutputStore(output)).to_pylist()
    by_line = {}
    for r in ledger:
        by_line.setdefault(int(r["input"].rsplit(":", 1)[1]), []).append(r)
    status = {n: sorted({(r["status"], r["error_class"]) for r in rows}) for n, rows in by_line.items()}
    assert status[2] == [("ok", "")] and status[4] == [("ok", "")] and status[5] == [("ok", "")]
    assert status[3] == [("ok", "")] and len(by_line[3]) >= 3  # 24 s of 6 s scenes → several clips
    assert status[6] == [("failed", "unavailable")] and "404" in by_line[6][0]["message"]
    assert status[7] == [("failed", "rate_limited")] and "429" in by_line[7][0]["message"]
    assert status[8] == [("failed", "decode_error")]
    assert status[9] == [("failed", "no_video_stream")]
    assert status[10] == [("failed", "invalid_input")] and status[11] == [("failed", "invalid_input")]
    assert status[12] == [("duplicate", "")] and f"{ids}:4" in by_line[12][0]["message"]
    assert summary["clips"]["failed"] == 6 and summary["duplicate_lines"] == 1
    assert summary["errors"]["invalid_input"] == 2
    # where the time went: CPU per stage and per clip, and the share of wall time each was the bottleneck
    stages = summary["run"]["stages"]
    assert list(stages) == ["fetch", "media", "commit"]
    assert all(s["cpu_s"] > 0 and s["busy_s"] > 0 for s in stages.values())
    assert stages["media"]["cpu_s"] > stages["commit"]["cpu_s"]  # five x264 encodes against a few tars
    assert sum(s["bottleneck_share"] for s in stages.values()) == pytest.approx(1.0, abs=0.01)
    assert summary["run"]["cpu_s_per_clip"] > 0
    assert_exactly_once(output, lines_of(ids))

    # the samples, read back with plain webdataset
    samples = tar_samples(output)
    for key, s in samples.items():
        meta = json.loads(s["json"])
        assert re.fullmatch(r"[A-Za-z0-9_-]+_\d+_\d+", key) and meta["key"] == key
        assert s["mp4"][4:8] == b"ftyp"
        assert {"mp4", "flac", "json", "txt"} <= set(s) and s["flac"][:4] == b"fLaC"  # silence if no audio
        # the tiny preset has no stage that consumes frames: none were decoded
        assert meta["frame_times"] == [] and meta["num_frames"] == round(meta["duration"] * meta["fps"])
        assert 5.0 - 0.5 <= meta["duration"] <= 30.5 or meta["input"].endswith((":2", ":4"))
    silent = [s for s in samples.values() if json.loads(s["json"])["url"].endswith("silent.mp4")]
    assert len(silent) == 1 and not json.loads(silent[0]["json"])["has_audio"]
    assert json.loads(silent[0]["json"])["audio_missing"]
    speech = [s for s in samples.values() if json.loads(s["json"])["url"].endswith("speech.mp4")][0]
    assert speech["flac"][:4] == b"fLaC" and abs(json.loads(speech["json"])["duration"] - 5.5) < 0.3

    # manifests agree with the tars
    manifest = pq.read_table([str(p) for p in Path(output).glob("shard-*.parquet")])
    assert sorted(manifest["key"].to_pylist()) == sorted(samples)
    assert json.loads((Path(output) / "summary.json").read_text())["clips"]["ok"] == len(samples)

    # the same command again settles nothing new
    commits = sorted(os.listdir(Path(output) / "ledger"))
    again = ingest([str(ids)], cfg)
    assert sorted(os.listdir(Path(output) / "ledger")) == commits
    assert again["clips"] == summary["clips"]

    # status shows failures by class; retry re-runs only the rate-limited clip once it serves again
    assert main(["status", output]) == 0
    http_server.clear_failures("limited.mp4")
    assert main(["retry", output, "--class", "rate_limited", "--progress", "false"]) == 0
    after = read_ledger(OutputStore(output))
    limited = after.filter(pc.equal(after["input"], f"{ids}:7")).to_pylist()
    assert [(r["status"], r["error_class"]) for r in limited] == [("ok", "")]
    assert_exactly_once(output, lines_of(ids))
    assert read_ledger(OutputStore(output)).num_rows == len(ledger)


def test_strict_refuses_malformed_input_before_any_work(tmp_path, media_root):
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{media_root / 'tone.mp4'} 1 6\nnot a video!\n")
    output = tmp_path / "out"
    code = main(["ingest", str(ids), "--config", "tiny", "--output", str(output), "--strict"])
    assert code == 3
    assert not list(output.glob("ledger/*.parquet")) and not list(output.glob("*.tar"))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def test_kill_9_mid_run_then_rerun_is_exactly_once(tmp_path, http_server):
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{http_server.url(f'copy{i}.mp4')} 1 6\n" for i in range(10)))
    output = tmp_path / "out"
    cmd = [str(BIN / "vast-pipeline"), "ingest", str(ids), "--config", "tiny", "--output", str(output),
           "--no-progress", "--shards.samples_per_shard", "1", "--stages.media.batch_size", "1"]
    proc = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(output.glob("ledger/part-*.parquet"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and every Ray process it started
    proc.wait()
    done_before = set(settled_keys(str(output)))
    assert 2 <= len(done_before) < 10, "the kill must land mid-run"
    served_before = {i: http_server.count(f"copy{i}.mp4") for i in range(10)}

    subprocess.run(cmd, env=_env(), check=True, timeout=300, capture_output=True)
    assert_exactly_once(str(output), lines_of(ids))
    assert len(settled_keys(str(output))) == 10
    assert not list(output.glob("*.tmp-*")) and not list(output.glob("ledger/*.tmp-*"))
    # nothing committed before the kill was downloaded again
    for i in {int(re.match(r"copy(\d+)-", k).group(1)) for k in done_before}:
        assert http_server.count(f"copy{i}.mp4") == served_before[i]


def test_a_lost_ray_worker_mid_run_still_settles_every_clip_once(tmp_path, http_server):
    import threading

    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{http_server.url(f'copy{i}.mp4')} 1 6\n" for i in range(6)))
    output = tmp_path / "out"
    cfg = load_config("tiny", {"output": str(output), "progress": False, "shards.samples_per_shard": 1,
                               "stages.media.batch_size": 1})
    killed: list[int] = []

    def kill_a_worker() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if list(output.glob("ledger/part-*.parquet")):
                for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                    try:
                        if b"ray::MapBatches" in cmdline.read_bytes():
                            pid = int(cmdline.parent.name)
                            os.kill(pid, signal.SIGKILL)  # the worker dies mid-task
                            killed.append(pid)
                            return
                    except (OSError, ProcessLookupError):
                        continue
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    ingest([str(ids)], cfg)
    killer.join()
    assert killed, "no Ray worker was running to be killed"
    assert_exactly_once(str(output), lines_of(ids))
    assert len(settled_keys(str(output))) == 6
