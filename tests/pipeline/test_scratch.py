"""A run's temporary files live in one folder of that run, which the next run and ``status --clean``
remove: checked on the folders a real ``vast-pipeline ingest`` leaves when killed with ``kill -9``
(its whole process group: the driver and the Ray workers)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.crash import kill_session
from vast.cli import main
from vast.pipeline.scratch import RUN_PREFIX, begin_run, output_key, scratch_dir, scratch_root
from vast.shards.store import OutputStore

BIN = Path(sys.executable).parent


def test_run_folders_are_named_by_output_and_run_and_only_stale_ones_go(tmp_path):
    store = OutputStore(str(tmp_path / "out"))
    key = output_key(store)
    folder, removed = begin_run(store)
    assert Path(folder).parent == tmp_path / "out" / ".staging" and Path(folder).is_dir() and removed == []
    assert Path(folder).name.startswith(f"{RUN_PREFIX}{key}-")
    assert scratch_root(OutputStore("memory://bucket/out")) == tempfile.gettempdir()  # a remote output

    # a worker on a machine the driver never ran on: entering the new run's folder removes the earlier
    # runs' folders of the same output beside it, and nothing of another output
    work = tmp_path / "work"
    stale = work / f"{RUN_PREFIX}{key}-0badc0ffee00"
    (stale / "vast-media-x").mkdir(parents=True)
    (stale / "vast-media-x" / "source.mp4").write_bytes(b"\0" * 1000)
    other = work / f"{RUN_PREFIX}{'f' * 12}-0badc0ffee00"
    other.mkdir()
    mine = work / f"{RUN_PREFIX}{key}-123456789abc"
    assert scratch_dir(str(mine)) == str(mine) and mine.is_dir()
    assert not stale.exists() and other.is_dir()
    # the driver of the next run does the same on its machine, and says what it removed
    stale.mkdir()
    (stale / "f").write_bytes(b"\0" * 2048)
    nxt, removed = begin_run(store, str(work))
    assert removed == [(str(stale), 2048), (str(mine), 0)]
    assert not stale.exists() and not mine.exists() and other.is_dir() and Path(nxt).parent == work


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _start(ids: Path, output: Path, work: Path, log: Path) -> subprocess.Popen:
    cmd = [str(BIN / "vast-pipeline"), "ingest", str(ids), "--config", "tiny", "--output", str(output),
           "--no-progress", "--shards.samples_per_shard", "1", "--stages.media.batch_size", "1",
           "--stages.fetch.options.work_dir", str(work)]
    with open(log, "wb") as stderr:
        return subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=stderr)


def _kill_mid_work(proc: subprocess.Popen, work: Path) -> Path:
    """kill -9 the whole run once a stage's temporary folder holds bytes; returns its run folder."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            busy = [p for p in work.glob(f"{RUN_PREFIX}*/vast-*")
                    if any(f.is_file() and f.stat().st_size for f in p.rglob("*"))]
        except FileNotFoundError:  # a file went away between listing and looking at it
            continue
        if busy:
            kill_session(proc)
            return busy[0].parent
        time.sleep(0.02)
    kill_session(proc)
    pytest.fail("no temporary file appeared before the run ended")


@pytest.mark.slow
def test_kill_9_leaves_a_run_folder_that_the_next_run_and_status_clean_remove(tmp_path, http_server, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{http_server.url(f'copy{i}.mp4')} 1 6\n" for i in range(10)))
    output, work = tmp_path / "out", tmp_path / "work"  # work: the run folders' root, as on a remote output

    first = _kill_mid_work(_start(ids, output, work, tmp_path / "first.log"), work)
    assert first.is_dir() and sum(f.stat().st_size for f in first.rglob("*") if f.is_file()) > 0

    second = _start(ids, output, work, tmp_path / "second.log")
    while second.poll() is None and first.exists():  # the next run removes it before its own work
        time.sleep(0.02)
    assert not first.exists()
    left = _kill_mid_work(second, work)
    assert "removed 1 temporary folder(s) of an interrupted run" in (tmp_path / "second.log").read_text()
    assert left != first and left.is_dir()

    capsys.readouterr()
    assert main(["status", str(output), "--clean"]) == 0
    shown = capsys.readouterr().out
    assert f"removed  {left} (" in shown and "cleaned  " in shown
    assert not list(work.glob(f"{RUN_PREFIX}*")) and not list(output.glob(f".staging/{RUN_PREFIX}*"))
    assert main(["status", str(output), "--clean"]) == 0
    assert "cleaned  nothing left behind by interrupted runs" in capsys.readouterr().out


def test_status_clean_is_refused_while_a_run_holds_the_output(tmp_path, capsys):
    store = OutputStore(str(tmp_path / "out"))
    folder, _ = begin_run(store)
    lock = store.lock()
    try:
        assert main(["status", str(tmp_path / "out"), "--clean"]) == 6
        assert "another vast-pipeline run holds" in capsys.readouterr().err
        assert Path(folder).is_dir()  # the running run's folder is untouched
    finally:
        lock.close()
    assert main(["status", str(tmp_path / "out"), "--clean"]) == 0
    assert f"removed  {folder} (0.0 MiB)" in capsys.readouterr().out and not Path(folder).exists()
