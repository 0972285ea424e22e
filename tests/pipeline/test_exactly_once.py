"""One owner per clip key, whichever request cuts it: real Ray, yt-dlp over a local HTTP server,
ffmpeg and decord, read back with plain WebDataset (which refuses a key twice in a tar)."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import webdataset as wds

from tests.mediagen import make_video
from vast.cli import main
from vast.pipeline.config import load_config
from vast.pipeline.graph import run_graph
from vast.pipeline.ingest import ingest, with_pipeline_columns
from vast.pipeline.inputs import REQUEST_SCHEMA
from vast.shards.ledger import read_ledger
from vast.shards.store import OutputStore

pytestmark = pytest.mark.slow

FAST_FETCH = {"stages.fetch.options.retries": 1, "stages.fetch.options.backoff_s": 0.01,
              "stages.fetch.options.backoff_max_s": 0.02}


@pytest.fixture(scope="module")
def served(media_root: Path) -> Path:
    """This module's own media (copies, so download counts are this module's alone): a 12 s video
    with a scene change at 6 s, and an 8 s one without."""
    folder = media_root / "exact"
    folder.mkdir(exist_ok=True)
    make_video(folder / "scenes.mp4", seconds=12.0, audio="tone", scene_every=6.0)
    for copy in ("a", "b", "c"):
        shutil.copy(folder / "scenes.mp4", folder / f"{copy}-scenes.mp4")
        shutil.copy(media_root / "tone.mp4", folder / f"{copy}-tone.mp4")
    return folder


def config(output: Path, **overrides):
    return load_config("tiny", {"output": str(output), "progress": False, **FAST_FETCH, **overrides})


def tar_keys(output: Path) -> Counter:
    """Sample keys over every committed tar, read by plain WebDataset."""
    urls = sorted(str(p) for p in output.glob("shard-*.tar"))
    return Counter(s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def ledger_rows(output: Path) -> list[dict]:
    return read_ledger(OutputStore(str(output))).to_pylist()


def assert_one_owner_per_key(output: Path) -> dict[str, dict]:
    """Every settled key once in the ledger, every ok key once in the tars; the ok rows by key."""
    rows = ledger_rows(output)
    settled = Counter(r["key"] for r in rows if r["status"] in ("ok", "failed") and r["key"])
    assert settled and max(settled.values()) == 1, settled
    ok = {r["key"]: r for r in rows if r["status"] == "ok"}
    keys = tar_keys(output)
    assert set(keys) == set(ok) and max(keys.values()) == 1, keys
    return ok


def lines(path: Path) -> dict[int, str]:
    return {n: f"{path}:{n}" for n in range(1, len(path.read_bytes().splitlines()) + 1)}


def test_span_and_whole_video_requests_share_no_clip_in_one_run(tmp_path, served, http_server):
    """Whole video + a span equal to one of its scenes + overlapping spans over HTTP; a local whole
    video whose only clip a span also names; a file name that is not UTF-8."""
    latin1 = os.fsencode(tmp_path) + b"/caf\xe9.mp4"
    shutil.copy(served / "a-tone.mp4", os.fsdecode(latin1))
    scenes = http_server.url("exact/a-scenes.mp4")
    ids = tmp_path / "ids.txt"
    ids.write_bytes("\n".join([
        scenes,                                    # 1: cut at its 6 s scene change
        f"{scenes} 6 12",                          # 2: equal to scene 2
        f"{scenes} 5 9",                           # 3, 4: overlapping spans, distinct clips
        f"{scenes} 7 11",
        str(served / "a-tone.mp4"),                # 5: one 8 s clip ...
        f"{served / 'a-tone.mp4'} 0 8",            # 6: ... which this span names
    ]).encode() + b"\n" + latin1 + b" 1 6\n")       # 7
    output = tmp_path / "out"
    summary = ingest([str(ids)], config(output))

    ok = assert_one_owner_per_key(output)
    line = lines(ids)
    by_input = Counter(r["input"] for r in ok.values())
    assert by_input == {line[1]: 1, line[2]: 1, line[3]: 1, line[4]: 1, line[6]: 1, line[7]: 1}
    owned = {r["key"]: r for r in ledger_rows(output) if r["status"] == "duplicate"}
    span_key = next(k for k, r in ok.items() if r["input"] == line[2])
    tone_key = next(k for k, r in ok.items() if r["input"] == line[6])
    assert span_key.endswith("_6000_12000") and tone_key.endswith("_0_8000")
    assert owned[span_key]["input"] == line[1] and line[2] in owned[span_key]["message"]
    assert owned[tone_key]["input"] == line[5] and line[6] in owned[tone_key]["message"]
    assert summary["clips"] == {"ok": 6, "failed": 0} and summary["duplicate_lines"] == 0
    assert summary["clips_owned_elsewhere"] == 2 and summary["pending_requests"] == 0
    cafe = next(r for r in ok.values() if r["input"] == line[7])
    assert cafe["key"].isascii() and cafe["source"] == "file://" + str(tmp_path) + "/caf%E9.mp4"

    # the same command again settles nothing and downloads nothing
    parts, served_before = sorted(os.listdir(output / "ledger")), http_server.count("exact/a-scenes.mp4")
    again = ingest([str(ids)], config(output))
    assert sorted(os.listdir(output / "ledger")) == parts
    assert http_server.count("exact/a-scenes.mp4") == served_before
    assert again["clips"] == summary["clips"] and again["pending_requests"] == 0


def test_clip_owners_hold_across_runs_in_both_orders(tmp_path, served, http_server):
    scenes = http_server.url("exact/b-scenes.mp4")
    # a whole video first, then spans: one equal to a committed scene (not downloaded), one new
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text(f"{scenes}\n")
    second.write_text(f"{scenes}\n{scenes} 6 12\n{scenes} 6 11\n")
    output = tmp_path / "out"
    ingest([str(first)], config(output))
    served_before = http_server.count("exact/b-scenes.mp4")
    summary = ingest([str(second)], config(output))
    ok = assert_one_owner_per_key(output)
    assert len(ok) == 3 and sum(r["input"] == f"{first}:1" for r in ok.values()) == 2
    (dup,) = [r for r in ledger_rows(output) if r["status"] == "duplicate"]
    assert dup["input"] == f"{second}:2" and dup["key"].endswith("_6000_12000")
    assert f"{first}:1" in dup["message"]
    # only the new span was fetched: span downloads are ranged, so count requests, not bytes
    assert http_server.count("exact/b-scenes.mp4") > served_before
    assert summary["duplicate_lines"] == 1 and summary["pending_requests"] == 0

    # spans first, then the whole video: it skips the span's clip and cuts the rest
    spans, whole = tmp_path / "spans.txt", tmp_path / "whole.txt"
    spans.write_text(f"{served / 'b-scenes.mp4'} 6 12\n")
    whole.write_text(f"{served / 'b-scenes.mp4'}\n")
    output = tmp_path / "out2"
    ingest([str(spans)], config(output))
    summary = ingest([str(whole), str(spans)], config(output))
    ok = assert_one_owner_per_key(output)
    assert sorted(r["input"] for r in ok.values()) == [f"{spans}:1", f"{whole}:1"]
    (owned,) = [r for r in ledger_rows(output) if r["status"] == "duplicate"]
    assert owned["input"] == f"{whole}:1" and owned["key"].endswith("_6000_12000")
    assert summary["clips_owned_elsewhere"] == 1 and summary["pending_requests"] == 0


def test_an_interrupted_retry_is_finished_by_retrying_again(tmp_path, served, http_server, capsys):
    """A whole video fails (HTTP 503); a span of it, fetched locally, is ok. Its retry is cut off
    after some commits: the video stays retryable by its class and ``status`` says how to finish."""
    path = "exact/c-scenes.mp4"
    http_server.fail_always(path, 503)
    records = tmp_path / "in.jsonl"
    records.write_text(json.dumps({"video_id": "vidC", "url": http_server.url(path)}) + "\n"
                       + json.dumps({"video_id": "vidC", "url": str(served / "c-scenes.mp4"),
                                     "start": 6, "end": 12}) + "\n")
    output = tmp_path / "out"
    cfg = config(output, **{"shards.samples_per_shard": 1})
    ingest([str(records)], cfg)
    failed = [r for r in ledger_rows(output) if r["status"] == "failed"]
    assert [(r["key"], r["error_class"]) for r in failed] == [("vidC", "network")]

    # the whole retry, run on a copy: its commits are what an interrupted retry leaves a prefix of
    http_server.clear_failures(path)
    full = tmp_path / "full"
    shutil.copytree(output, full)
    assert main(["retry", str(full), "--class", "network", "--progress", "false"]) == 0
    before = set(os.listdir(output / "ledger"))
    new_parts = sorted(set(os.listdir(full / "ledger")) - before)
    with_clip = [p for p in new_parts if any(
        r["status"] == "ok" for r in pa.parquet.read_table(full / "ledger" / p).to_pylist())]
    kept = with_clip[0]  # kill -9 after this commit: commits are atomic, so this is a real crash state
    for name in (f"ledger/{kept}", kept.replace("part-", "shard-").replace(".parquet", ".tar"),
                 kept.replace("part-", "shard-")):
        shutil.copy(full / name, output / name)

    capsys.readouterr()
    assert main(["status", str(output)]) == 0
    shown = capsys.readouterr().out
    assert "pending  1 request(s)" in shown and "1 of 2 clips settled; its own failure: network" in shown
    assert f"vast-pipeline retry {output} --class network" in shown
    assert main(["retry", str(output), "--class", "network", "--progress", "false"]) == 0
    ok = assert_one_owner_per_key(output)
    assert sorted(k.split("_", 1)[1] for k in ok) == ["0_6000", "6000_12000"]
    rows = ledger_rows(output)
    assert not [r for r in rows if r["status"] == "failed"]  # the video's failure is superseded
    assert json.loads((output / "summary.json").read_text())["pending_requests"] == 0
    capsys.readouterr()
    assert main(["status", str(output)]) == 0 and "not settled yet" not in capsys.readouterr().out


def test_the_writer_never_commits_a_key_twice_even_when_the_plan_does_not_stop_it(tmp_path, served):
    """Two requests cutting one key reach the sink in separate batches (no reservation, one sample
    per shard), then a later run repeats it against the committed ledger."""
    def request(req: str, start: float, end: float, line: int) -> dict:
        return {"request": req, "key": req, "input": f"ids.txt:{line}", "video_id": "d",
                "source": str(served / "c-tone.mp4"), "start": start, "end": end, "meta": "{}"}

    todo = with_pipeline_columns(pa.Table.from_pylist(
        [request("d", math.nan, math.nan, 1), request("d_0_8000", 0.0, 8.0, 2)], schema=REQUEST_SCHEMA), {})
    output = tmp_path / "out"
    cfg = config(output, **{"shards.samples_per_shard": 1})
    OutputStore(str(output))
    run_graph(cfg, todo, 0, lambda table: None)
    rows = ledger_rows(output)
    assert sorted((r["key"], r["status"]) for r in rows) == [("d_0_8000", "duplicate"), ("d_0_8000", "ok")]
    assert tar_keys(output) == {"d_0_8000": 1}

    # a second run whose plan forgot what is committed: the seeded owners still refuse it
    owner = next(r for r in rows if r["status"] == "ok")
    run_graph(cfg, todo.slice(1), 10, lambda table: None,
              owners={"d_0_8000": (owner["request"], owner["input"], True)})
    assert tar_keys(output) == {"d_0_8000": 1}
    assert pc.sum(pc.equal(read_ledger(OutputStore(str(output)))["status"], "ok")).as_py() == 1
