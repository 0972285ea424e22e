"""Randomized exactly-once: 40 ids drawn from good spans, whole videos, spans equal to their clips,
overlaps, repeats, spans past the end and bad inputs (local and over HTTP), a real ``vast-pipeline
ingest`` killed with ``kill -9`` (its whole session: driver, GCS, raylet, workers) at a random time
mid-run, then the same ingest again (in this process: one Ray for both seeds): every clip key once
in the tars and the effective ledger, every input line accounted for once, nothing pending, no
temporary folder left."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest
import webdataset as wds

from tests.crash import kill_session
from tests.mediagen import make_video
from vast.pipeline.config import load_config
from vast.pipeline.ingest import ingest
from vast.pipeline.scratch import RUN_PREFIX
from vast.shards.ledger import read_ledger
from vast.shards.store import OutputStore

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LINES = 40
VIDEOS = ("v0.mp4", "v1.mp4", "v2.mp4")  # 6 s, one clip when whole


@pytest.fixture(scope="module")
def pool(media_root: Path) -> Path:
    """Tiny media (160x120, 10 fps): three 6 s videos, a 12 s one with a scene change at 6 s, bad files."""
    folder = media_root / "randomized"
    folder.mkdir(exist_ok=True)
    make_video(folder / "v0.mp4", seconds=6.0, size="160x120", fps=10)
    for name in VIDEOS[1:]:
        shutil.copy(folder / "v0.mp4", folder / name)
    make_video(folder / "sc.mp4", seconds=12.0, size="160x120", fps=10, scene_every=6.0)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "noise.mp4").write_bytes(random.Random(0).randbytes(30_000))
    return folder


@pytest.fixture
def special(tmp_path: Path):
    """Local sources that are not files: a FIFO, a socket, a folder (and /dev/zero)."""
    os.mkfifo(tmp_path / "pipe.mp4")
    (tmp_path / "folder.mp4").mkdir()
    short = tempfile.mkdtemp(prefix="vs-")  # a socket's path must stay under 108 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.path.join(short, "s.mp4"))
        yield [str(tmp_path / "pipe.mp4"), os.path.join(short, "s.mp4"), str(tmp_path / "folder.mp4"),
               "/dev/zero"]
    shutil.rmtree(short)


def draw_lines(rng: random.Random, local: str, url: str, special: list[str]) -> list[str]:
    """``LINES`` ids lines; each source local or over HTTP."""
    lines: list[str] = []
    while len(lines) < LINES:
        base, video = rng.choice([local, url]), rng.choice(VIDEOS)
        kind = rng.choices(["span", "whole", "clip", "overlap", "repeat", "past", "bad"],
                           [6, 3, 2, 2, 2, 2, 3])[0]
        start = round(rng.uniform(0.0, 2.5), 1)
        if kind == "span":
            lines.append(f"{base}/{video} {start:g} {start + round(rng.uniform(1.5, 3.0), 1):g}")
        elif kind == "whole":
            lines.append(f"{base}/{rng.choice([*VIDEOS, 'sc.mp4'])}")
        elif kind == "clip":  # a span equal to a clip of the whole video (its only one, or a scene)
            lines.append(rng.choice([f"{base}/{video} 0 6", f"{base}/sc.mp4 0 6", f"{base}/sc.mp4 6 12"]))
        elif kind == "overlap":
            lines += [f"{base}/{video} {start:g} {start + 3:g}",
                      f"{base}/{video} {start + 1:g} {start + 4:g}"]
        elif kind == "repeat" and lines:
            lines.append(rng.choice(lines))
        elif kind == "past":  # partly past the end, after the end, within end_slack_s
            lines.append(f"{base}/{video} {rng.choice(['4 9', '7 9', '4 6.05'])}")
        elif kind == "bad":
            lines.append(rng.choice([f"{base}/empty.mp4", f"{base}/noise.mp4", f"{base}/missing.mp4",
                                     f"{base}/nul\0name.mp4", f"{base}/{video} 5 2", "not a video!",
                                     *special]))
    return lines[:LINES]


OPTIONS = {"shards.samples_per_shard": "2", "stages.media.batch_size": "1",
           "stages.fetch.options.retries": "0"}


def _command(ids: Path, output: Path) -> list[str]:
    return [str(BIN / "vast-pipeline"), "ingest", str(ids), "--config", "tiny", "--output", str(output),
            "--no-progress", *(x for k, v in OPTIONS.items() for x in (f"--{k}", v))]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def check_exactly_once(output: Path, ids: Path) -> Counter:
    """Every key once (tars, effective ledger), every line once; returns the rows by status."""
    ledger = read_ledger(OutputStore(str(output)))
    rows = ledger.to_pylist()
    settled = Counter(r["key"] for r in rows if r["status"] in ("ok", "failed") and r["key"])
    assert max(settled.values()) == 1, [k for k, n in settled.items() if n > 1]
    ok = {r["key"] for r in rows if r["status"] == "ok"}
    tars = sorted(str(p) for p in output.glob("shard-*.tar"))
    keys = Counter(s["__key__"] for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert set(keys) == ok and max(keys.values()) == 1
    # every line: one row, or (a whole video) one row per clip it was cut into, each key once
    lines = {f"{ids}:{n}" for n in range(1, LINES + 1)}
    by_line: dict[str, list[dict]] = {}
    for r in rows:
        by_line.setdefault(r["input"], []).append(r)
    assert set(by_line) == lines
    for line, got in by_line.items():
        assert len({r["key"] for r in got}) == len(got), (line, got)
        whole = got[0]["key"] != got[0]["request"]
        assert len(got) == (max(r["n_clips"] for r in got) if whole else 1), (line, got)
    assert not pc.any(pc.is_null(ledger["status"])).as_py()
    return Counter(r["status"] for r in rows)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_ids_killed_at_a_random_time_then_rerun_are_exactly_once(tmp_path, pool, http_server,
                                                                       special, seed):
    rng = random.Random(seed)
    ids = tmp_path / "ids.txt"
    ids.write_bytes("\n".join(draw_lines(rng, str(pool), http_server.url("randomized"), special))
                    .encode() + b"\n")
    output = tmp_path / "out"
    started = time.time()
    proc = subprocess.Popen(_command(ids, output), env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the first commit of the graph (the plan commits the lines it rejects before Ray starts): a shard
    while proc.poll() is None and not list(output.glob("shard-*.tar")):
        time.sleep(0.05)
    first_commit = time.time() - started
    time.sleep(rng.uniform(0.0, 3.0))
    landed = proc.poll() is None
    killed_at = time.time() - started
    kill_session(proc)
    parts = len(list(output.glob("ledger/part-*.parquet")))
    assert landed and parts >= 1, "the kill must land mid-run"
    before = {r["input"] for r in read_ledger(OutputStore(str(output))).to_pylist()}
    left = sum(1 for p in output.glob(f".staging/{RUN_PREFIX}*/*"))  # temporary folders the kill left
    assert len(before) < LINES, "the kill must land before every line is settled"

    rerun = time.time()
    summary = ingest([str(ids)], load_config("tiny", {"output": str(output), "progress": False, **OPTIONS}))
    statuses = check_exactly_once(output, ids)
    assert summary["pending_requests"] == 0
    assert json.loads((output / "summary.json").read_text())["pending_requests"] == 0
    assert not list(output.glob(f".staging/{RUN_PREFIX}*")), "a run folder was left behind"
    print(f"\nseed {seed}: {LINES} ids; first commit at {first_commit:.1f} s, kill -9 at {killed_at:.1f} s "
          f"with {parts} commit(s), {len(before)} line(s) settled, {left} temporary folder(s) left; rerun "
          f"{time.time() - rerun:.1f} s: "
          f"{dict(statuses)}")
