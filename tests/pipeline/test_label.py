"""``vast-pipeline label``: a folder of videos, images and audio with the documented meta.json."""

from __future__ import annotations

import json
import subprocess

import webdataset as wds

from tests.mediagen import make_audio_only, make_video
from vast.cli import main
from vast.shards.ledger import read_ledger
from vast.shards.store import OutputStore


def test_label_folder_with_the_documented_meta_json(tmp_path):
    folder = tmp_path / "media"
    make_video(folder / "vid1.mp4", seconds=12.0, audio="tone", scene_every=3.0)  # stays ONE clip
    make_audio_only(folder / "snd1.m4a", seconds=3.0)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240", "-frames:v", "1",
                    str(folder / "img1.png")], check=True)
    # exactly the upstream form, without the `desc` field the upstream loader needs
    (folder / "meta.json").write_text(json.dumps([{"video_id": "vid1"}, {"video_id": "snd1"},
                                                  {"video_id": "img1"}, {"video_id": "missing"}]))
    output = tmp_path / "out"
    assert main(["label", str(folder), str(output), "--config", "tiny", "--no-progress"]) == 0

    samples = {s["__key__"]: s for s in wds.WebDataset(sorted(str(p) for p in output.glob("*.tar")),
                                                        shardshuffle=False)}
    assert sorted(samples) == ["img1_0_1000", "snd1_0_3000", "vid1_0_12000"]
    assert not json.loads(samples["snd1_0_3000"]["json"])["has_video"]  # its mp4 member is black frames
    assert samples["snd1_0_3000"]["flac"][:4] == b"fLaC"
    assert json.loads(samples["vid1_0_12000"]["json"])["meta"] == {"video_id": "vid1"}
    ledger = read_ledger(OutputStore(str(output))).to_pylist()
    missing = [r for r in ledger if r["error_class"] == "invalid_input"]
    assert len(missing) == 1 and "no media file named missing" in missing[0]["message"]
    labels = json.loads((output / "labels.json").read_text())
    assert sorted(labels) == ["img1", "snd1", "vid1"]
    assert all(isinstance(v, list) for v in labels.values())
