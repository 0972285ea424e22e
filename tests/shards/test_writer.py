import json
import math
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from tests.shards.probe import audio_samples, video_frames
from vast.shards.ledger import read_ledger
from vast.shards.store import OutputStore
from vast.shards.writer import ShardWriter


def clip_row(key, status="ok", flac=b"fLaC-bytes", caption=None):
    ok = status == "ok"
    row = {"request": key, "key": key, "input": "ids.txt:1", "video_id": key.split("_")[0],
           "source": "http://127.0.0.1/v.mp4", "start": 1.0, "end": 6.0, "meta": '{"label": "cat"}',
           "skip_keys": [], "n_clips": 1, "status": status, "error_class": "" if ok else "network",
           "message": "" if ok else "Connection refused", "stage": "" if ok else "fetch",
           "mp4": b"\x00\x00\x00\x18ftypisom" if ok else b"", "flac": flac if ok else b"",
           "frames": np.zeros((2, 8, 8, 3), np.uint8), "source_info": '{"title": "t"}',
           "clip_info": json.dumps({"duration": 5.0, "fps": 25.0, "width": 320, "height": 240,
                                    "audio_missing": None if flac else "no audio stream",
                                    "num_frames": 2, "frame_times": [1.25, math.nan]})}
    if caption:
        row["vast_cap"] = caption
    return row


def test_commit_is_readable_by_plain_webdataset_with_manifest_and_ledger(tmp_path):
    out = str(tmp_path / "out")
    rows = [clip_row("a_1000_6000"), clip_row("b_1000_6000", flac=b"", caption="a dog barks"),
            clip_row("c_1000_6000", status="failed")]
    ledger = ShardWriter(out).commit(rows, 7)
    assert ledger.column("status").to_pylist() == ["ok", "ok", "failed"]
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shard-000007.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["a_1000_6000", "b_1000_6000"]
    a, b = samples
    assert a["flac"] == b"fLaC-bytes" and a["txt"] == b""  # no omni-caption: an empty txt
    assert b["txt"] == b"a dog barks"
    meta = json.loads(a["json"])
    assert meta["span"] == [1.0, 6.0] and meta["meta"] == {"label": "cat"}
    assert meta["frame_times"] == [1.25, None]  # NaN is not JSON: null
    assert meta["audio_missing"] == "" and meta["vision_cap"] == [] and meta["provenance"] == {}
    assert json.loads(b["json"])["audio_missing"] == "no audio stream"
    manifest = pq.read_table(tmp_path / "out" / "shard-000007.parquet").to_pylist()
    assert [m["key"] for m in manifest] == ["a_1000_6000", "b_1000_6000"]
    assert manifest[1]["vast_cap"] == "a dog barks" and manifest[0]["has_audio"] is True
    failed = read_ledger(OutputStore(out)).to_pylist()[-1]
    assert (failed["key"], failed["error_class"], failed["message"]) == ("c_1000_6000", "network",
                                                                          "Connection refused")


def test_every_sample_has_the_same_members_and_json_types(tmp_path):
    """A silent clip and an audio-only item carry placeholders that decode to the clip's length."""
    audio_only = clip_row("snd_0_3000", flac=_tone_flac(tmp_path, 3.0))
    audio_only.update(mp4=b"", start=0.0, end=3.0, frames=np.zeros((0, 8, 8, 3), np.uint8),
                      clip_info=json.dumps({"duration": 3.0, "fps": None, "width": 0, "height": 0,
                                            "num_frames": 0, "frame_times": []}))
    silent = clip_row("b_1000_6000", flac=b"")
    ShardWriter(str(tmp_path)).commit([clip_row("a_1000_6000"), silent, audio_only], 0)
    tar = str(tmp_path / "shard-000000.tar")
    samples = {s["__key__"]: s for s in wds.WebDataset(tar, shardshuffle=False)}
    assert {frozenset(k for k in s if not k.startswith("__")) for s in samples.values()} == {
        frozenset({"mp4", "flac", "json", "txt"})}
    infos = {k: json.loads(s["json"]) for k, s in samples.items()}
    assert len({tuple(i) for i in infos.values()}) == 1  # one key set, in one order
    for name in infos["a_1000_6000"]:  # one JSON type per field
        assert len({type(i[name]) for i in infos.values()}) == 1, name
    assert (infos["b_1000_6000"]["has_audio"], infos["snd_0_3000"]["has_video"]) == (False, False)
    assert infos["snd_0_3000"]["fps"] == 0.0 and infos["snd_0_3000"]["video_missing"]

    silence = audio_samples(samples["b_1000_6000"]["flac"])
    assert len(silence) == 5 * 16000 and not silence.any()
    assert video_frames(samples["snd_0_3000"]["mp4"]) == (75, 25)  # round(3.0 s × 25 fps) black frames


def _tone_flac(tmp_path, seconds):
    path = tmp_path / "tone.flac"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"sine=d={seconds}", "-ar", "16000",
                    str(path)], check=True)
    return path.read_bytes()


def test_a_crash_before_the_ledger_part_leaves_nothing_visible(tmp_path):
    out = str(tmp_path / "out")
    writer = ShardWriter(out)
    writer.commit([clip_row("a_1000_6000")], 0)
    # a crash after the tar and manifest of commit 1 but before its ledger part:
    (tmp_path / "out" / "shard-000001.tar").write_bytes(b"partial")
    (tmp_path / "out" / "shard-000001.parquet").write_bytes(b"partial")
    (tmp_path / "out" / "ledger" / "part-000002.parquet.tmp-1234").write_bytes(b"partial")
    store = OutputStore(out)
    assert store.committed_numbers() == [0]
    removed = store.clean_uncommitted()
    assert sorted(removed) == ["ledger/part-000002.parquet.tmp-1234", "shard-000001.parquet",
                               "shard-000001.tar"]
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*")) == ["shard-000000.parquet",
                                                                          "shard-000000.tar"]


def test_recommitting_the_same_batch_replaces_it(tmp_path):
    out = str(tmp_path / "out")
    rows = [clip_row("a_1000_6000")]
    ShardWriter(out).commit(rows, 3)
    ShardWriter(out).commit(rows, 3)  # a retried Ray task writes the same number
    assert read_ledger(OutputStore(out)).num_rows == 1
    assert len(list((tmp_path / "out").glob("*.tar"))) == 1


@pytest.mark.slow
def test_every_clip_of_a_run_lasts_exactly_its_keyed_span(corpus):
    """mp4: round(duration × fps) frames; flac: round(duration × 16000) samples; duration from the key."""
    kinds = set()
    for tar in sorted(corpus.output.glob("shard-*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            _, start_ms, end_ms = s["__key__"].rsplit("_", 2)
            seconds = (int(end_ms) - int(start_ms)) / 1000
            frames, fps = video_frames(s["mp4"])
            assert frames == round(seconds * fps), (s["__key__"], frames, fps)
            assert len(audio_samples(s["flac"])) == round(seconds * 16000), s["__key__"]
            info = json.loads(s["json"])
            assert info["duration"] == seconds
            if info["has_video"]:
                assert info["num_frames"] == frames
            kinds.add((info["has_video"], info["has_audio"]))
    assert kinds == {(True, True), (True, False), (False, True)}  # placeholders follow the rule too


def test_a_key_twice_in_one_batch_is_one_tar_member_and_a_duplicate_row(tmp_path):
    out = str(tmp_path / "out")
    twice = {**clip_row("a_1000_6000"), "request": "a", "input": "ids.txt:2"}
    ledger = ShardWriter(out).commit([clip_row("a_1000_6000"), twice, clip_row("b_1000_6000")], 0)
    assert list(zip(ledger["key"].to_pylist(), ledger["status"].to_pylist(), strict=True)) == [
        ("a_1000_6000", "ok"), ("b_1000_6000", "ok"), ("a_1000_6000", "duplicate")]
    assert "ids.txt:1" in ledger["message"][2].as_py()
    # plain webdataset raises "duplicate file name in tar file" on a second member of one key
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shard-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["a_1000_6000", "b_1000_6000"]
    assert pq.read_table(tmp_path / "out" / "shard-000000.parquet")["key"].to_pylist() == [
        "a_1000_6000", "b_1000_6000"]
