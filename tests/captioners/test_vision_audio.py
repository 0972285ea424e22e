"""The VAST vision and audio captioner stages on tiny random-weight captioners and real media rows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.captioners.conftest import synthetic_rows
from vast.captioners.audio import AudioCaptioner, AudioCaptionerConfig
from vast.captioners.base import input_digest
from vast.captioners.tiny import write_tiny_captioners
from vast.captioners.vision import VisionCaptioner, VisionCaptionerConfig
from vast.model import GenerationConfig, load_checkpoint, load_tokenizer, media_batch
from vast.pipeline.stage import batch_of, rows_of


def vision(paths: dict[str, str], **options) -> VisionCaptioner:
    return VisionCaptioner(
        VisionCaptionerConfig(checkpoint=paths["vision_captioner"], tokenizer=paths["tokenizer"], **options)
    )


def audio(paths: dict[str, str], **options) -> AudioCaptioner:
    return AudioCaptioner(
        AudioCaptionerConfig(checkpoint=paths["audio_captioner"], tokenizer=paths["tokenizer"], **options)
    )


def run(stage, rows: list[dict]) -> list[dict]:
    """The stage called as the graph calls it: on a batch of columns."""
    return rows_of(stage(batch_of(rows)))


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def vision_stage(tiny_captioners) -> VisionCaptioner:
    return vision(tiny_captioners)


@pytest.fixture(scope="module")
def audio_stage(tiny_captioners) -> AudioCaptioner:
    return audio(tiny_captioners)


def test_vision_captions_of_a_clip_do_not_depend_on_its_batch(vision_stage, media_rows):
    rows = [media_rows["tone0"], media_rows["tone1"], media_rows["silent"], *synthetic_rows(5)]
    batched = {r["key"]: r["vision_cap"] for r in run(vision_stage, rows)}
    assert len(batched) == 8
    for caps in batched.values():
        assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    one_by_one = {r["key"]: run(vision_stage, [r])[0]["vision_cap"] for r in rows}
    assert one_by_one == batched
    for r in run(vision_stage, rows[::-1][:4]):  # another composition and order
        assert r["vision_cap"] == batched[r["key"]]
    # the draws differ per clip: no two clips share their captions
    assert len({tuple(caps) for caps in batched.values()}) == 8


def test_sampling_is_seeded_per_run(tiny_captioners, vision_stage):
    rows = synthetic_rows(3)
    first = [r["vision_cap"] for r in run(vision_stage, rows)]
    assert [r["vision_cap"] for r in run(vision(tiny_captioners), rows)] == first
    assert [r["vision_cap"] for r in run(vision(tiny_captioners, seed=1), rows)] != first


def test_top_1_sampling_is_the_models_greedy_caption(tiny_captioners, media_rows):
    """The batched per-clip sampler decodes as the model does: with k = 1 it is greedy decoding."""
    stage = vision(tiny_captioners, top_k=1, num_captions=2, num_frames=4)
    rows = [media_rows["tone0"], *synthetic_rows(2)]
    got = [r["vision_cap"] for r in run(stage, rows)]
    model = load_checkpoint(tiny_captioners["vision_captioner"]).eval()
    model.set_tokenizer(load_tokenizer(tiny_captioners["tokenizer"]))
    batch = media_batch(videos=[r["frames"] for r in rows], num_frames=4, size=model.cfg.vision.image_size)
    greedy = model.caption(batch, "tv", GenerationConfig(strategy="greedy", max_len=40))
    assert got == [caps * 2 for caps in greedy]


def test_audio_captions_and_a_clip_without_audio(audio_stage, media_rows):
    rows = [media_rows["tone0"], media_rows["silent"], media_rows["tone1"]]
    assert json.loads(media_rows["silent"]["clip_info"])["has_audio"] is False
    out = run(audio_stage, rows)
    assert [r["status"] for r in out] == ["ok"] * 3
    tone0, silent, tone1 = (r["audio_cap"] for r in out)
    assert silent == []
    assert len(tone0) == 3 and len(tone1) == 3 and tone0 != tone1
    assert [run(audio_stage, [r])[0]["audio_cap"] for r in rows] == [tone0, silent, tone1]
    # the empty list is an annotation with its provenance and reason, so a resumed run does not redo it
    record = json.loads(out[1]["provenance"])["audio_cap"]
    assert record["model"] == audio_stage.config.checkpoint
    assert record["empty_reason"] == "no audio (no audio stream)"
    assert json.loads(out[0]["provenance"])["audio_cap"]["empty_reason"] == ""


def test_provenance_records_weights_checksum_and_decoding(
    vision_stage, audio_stage, tiny_captioners, media_rows
):
    row = run(audio_stage, run(vision_stage, [media_rows["tone0"]]))[0]
    prov = json.loads(row["provenance"])
    assert prov["vision_cap"] == {
        "model": tiny_captioners["vision_captioner"],
        "weights_sha256": sha256(tiny_captioners["vision_captioner"]),
        "decoding": {"strategy": "top_k_sampling", "top_k": 10, "num_captions": 3, "max_len": 40, "seed": 0,
                     "num_frames": 8},
        "prompt_version": None,
        "inputs": {"mp4": input_digest(media_rows["tone0"]["mp4"])},
        "empty_reason": "",
    }
    assert prov["audio_cap"]["inputs"] == {"flac": input_digest(media_rows["tone0"]["flac"])}
    assert prov["audio_cap"]["weights_sha256"] == sha256(tiny_captioners["audio_captioner"])
    assert prov["audio_cap"]["decoding"]["num_clips"] == 3
    assert len(row["vision_cap"]) == 3 and len(row["audio_cap"]) == 3


def test_a_bad_row_fails_alone(vision_stage, audio_stage, media_rows):
    good = synthetic_rows(4)
    no_frames = dict(good[1], frames=np.zeros((0, 64, 64, 3), np.uint8))
    gray = dict(good[2], frames=np.zeros((8, 64, 64), np.uint8))
    already_failed = dict(good[3], status="failed", error_class="network", message="reset", stage="fetch")
    out = run(vision_stage, [good[0], no_frames, gray, already_failed])
    assert [r["status"] for r in out] == ["ok", "ok", "failed", "failed"]
    assert out[0]["vision_cap"] == run(vision_stage, [good[0]])[0]["vision_cap"]
    # no frames at all (an audio-only item) is not a failure: no captions, and the reason
    assert out[1]["vision_cap"] == []
    assert json.loads(out[1]["provenance"])["vision_cap"]["empty_reason"].startswith("no video frames")
    assert (out[2]["error_class"], out[2]["stage"]) == ("decode_error", "vision_caption")
    assert "frames" in out[2]["message"] and out[2]["vision_cap"] is None
    assert (out[3]["error_class"], out[3]["stage"], out[3]["vision_cap"]) == ("network", "fetch", None)

    bad_flac = dict(media_rows["tone1"], flac=b"fLaC but not really")
    out = run(audio_stage, [media_rows["tone0"], bad_flac])
    assert [r["status"] for r in out] == ["ok", "failed"]
    assert len(out[0]["audio_cap"]) == 3
    assert (out[1]["error_class"], out[1]["stage"]) == ("decode_error", "audio_caption")
    assert out[1]["message"]  # ffmpeg's own words


def test_a_failing_batch_is_split_and_retried_not_dropped(vision_stage, monkeypatch):
    rows = synthetic_rows(5)
    want = [r["vision_cap"] for r in run(vision_stage, rows)]
    sizes = []
    real = vision_stage.annotate

    def out_of_memory_above_one(batch_rows):
        sizes.append(len(batch_rows))
        if len(batch_rows) > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch_rows)

    monkeypatch.setattr(vision_stage, "annotate", out_of_memory_above_one)
    out = run(vision_stage, rows)
    assert [r["status"] for r in out] == ["ok"] * 5
    assert [r["vision_cap"] for r in out] == want
    assert sizes[0] == 5 and sizes.count(1) == 5


def test_existing_captions_are_kept_unless_overwrite(tiny_captioners, vision_stage, monkeypatch):
    rows = synthetic_rows(2)
    imported = {"vision_cap": {"model": "VAST-27M annotations"}}
    rows[0] |= {"vision_cap": ["a caption imported from VAST-27M"], "provenance": json.dumps(imported)}
    rows[1] |= {"vision_cap": None, "provenance": "{}"}
    seen = []
    real = vision_stage.annotate
    monkeypatch.setattr(vision_stage, "annotate", lambda rs: seen.extend(r["key"] for r in rs) or real(rs))
    out = run(vision_stage, rows)
    assert seen == [rows[1]["key"]]
    assert out[0]["vision_cap"] == ["a caption imported from VAST-27M"]
    assert json.loads(out[0]["provenance"]) == imported
    assert len(out[1]["vision_cap"]) == 3

    redone = run(vision(tiny_captioners, overwrite=True), rows)
    assert len(redone[0]["vision_cap"]) == 3 and redone[0]["vision_cap"] != rows[0]["vision_cap"]
    assert json.loads(redone[0]["provenance"])["vision_cap"]["weights_sha256"] == sha256(
        tiny_captioners["vision_captioner"]
    )


def to_upstream(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> an upstream ``model_step_N.pt``: DDP prefix, EVA ``visual.`` tower, CLIP text parts."""
    out = {}
    for k, v in state.items():
        if k.startswith("vision_encoder."):
            k = "vision_encoder.visual." + k.removeprefix("vision_encoder.")
        out["module." + k] = v
    out["module.vision_encoder.text.token_embedding.weight"] = torch.zeros(10, 4)
    out["module.vision_encoder.logit_scale"] = torch.tensor(4.6)
    return out


def test_an_upstream_run_directory_loads_as_the_vision_captioner(tiny_captioners, vision_stage, tmp_path):
    blob = torch.load(tiny_captioners["vision_captioner"], map_location="cpu", weights_only=True)
    run_dir = tmp_path / "output" / "vast" / "vision_captioner"
    (run_dir / "ckpt").mkdir(parents=True)
    (run_dir / "log").mkdir()
    (run_dir / "log" / "hps.json").write_text("{}")
    torch.save(to_upstream(blob["model"]), run_dir / "ckpt" / "model_step_8000.pt")
    torch.save({"module.bogus": torch.zeros(1)}, run_dir / "ckpt" / "model_step_500.pt")  # older: unused
    # the tiny config in the vision captioner's layout, as the stage's options would name it
    vocab = blob["config"]["text"]["vocab_size"]
    overrides = {"audio": None, "vision_frames": 8, "text": {"vocab_size": vocab}}
    stage = VisionCaptioner(VisionCaptionerConfig(
        checkpoint=str(run_dir), tokenizer=tiny_captioners["tokenizer"], model="tiny",
        model_overrides=overrides,
    ))
    rows = synthetic_rows(3)
    out = run(stage, rows)
    assert [r["vision_cap"] for r in out] == [r["vision_cap"] for r in run(vision_stage, rows)]
    prov = json.loads(out[0]["provenance"])["vision_cap"]
    assert prov["model"] == str(run_dir)
    assert prov["weights_sha256"] == sha256(run_dir / "ckpt" / "model_step_8000.pt")


def test_a_checkpoint_without_the_needed_tower_is_refused(tiny_captioners):
    with pytest.raises(ValueError, match="no \\['a'\\] tower"):
        AudioCaptioner(AudioCaptionerConfig(
            checkpoint=tiny_captioners["vision_captioner"], tokenizer=tiny_captioners["tokenizer"]
        ))
    with pytest.raises(ValueError, match="checkpoint"):
        VisionCaptioner(VisionCaptionerConfig(tokenizer=tiny_captioners["tokenizer"]))


def test_tiny_captioner_files_are_deterministic(tiny_captioners, tmp_path):
    again = write_tiny_captioners(tmp_path)
    for name in ("vision_captioner", "audio_captioner"):
        assert sha256(again[name]) == sha256(tiny_captioners[name])
    assert (Path(again["tokenizer"]) / "vocab.txt").read_bytes() == \
        (Path(tiny_captioners["tokenizer"]) / "vocab.txt").read_bytes()
    model = load_checkpoint(again["audio_captioner"])
    assert model.vision_encoder is None and model.cfg.audio_clips == 3
