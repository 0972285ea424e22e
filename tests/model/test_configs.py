from pathlib import Path

import pytest

from vast.model import CONFIGS, create_model, get_config

REF = Path(__file__).resolve().parents[1] / "data" / "checkpoints"  # upstream layouts (names, shapes)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_vast_builds_the_real_architecture_on_meta():
    model = create_model("vast", device="meta")
    # reference counts (README beside the layouts) minus what VAST never uses: the EVA-CLIP text
    # tower (123,846,912), logit_scale (1) and the CLIP head visual.head (1,442,816)
    assert _count(model) == 1_373_132_590 - 123_846_912 - 1 - 1_442_816
    assert _count(model.vision_encoder) == 1_012_588_928 - 1_442_816
    assert _count(model.audio_encoder) == 90_311_792
    assert _count(model.multimodal_encoder) == 137_881_146
    assert model.vision_encoder.pos_embed.shape == (1, 257, 1408)


def test_tiny_is_a_few_million_parameters_of_the_same_architecture():
    tiny = create_model("tiny")
    assert 1_000_000 < _count(tiny) < 5_000_000
    big = create_model("vast", device="meta")
    assert {k.split(".")[0] for k in tiny.state_dict()} == {k.split(".")[0] for k in big.state_dict()}


def test_frame_embedding_lengths_follow_the_upstream_configs():
    rows = {
        r.split("\t")[0]: r.split("\t")
        for r in (REF / "frame_embedding_sizes_by_config.tsv").read_text().splitlines()[1:]
    }
    pairs = {
        "vast": "pretrain_cfg/pretrain_vast.json",
        "vision-captioner": "captioner_cfg/caption-generation-vision.json",
        "audio-captioner": "captioner_cfg/caption-generation-audio.json",
    }
    for name, file in pairs.items():
        row = rows[f"config/vast/{file}"]
        cfg = get_config(name)
        assert (cfg.vision_frames, cfg.audio_clips) == (int(row[1]), int(row[2]))
    assert get_config("vision-captioner").audio is None and get_config("audio-captioner").vision is None


def test_overrides_and_unknown_names():
    cfg = get_config("tiny", vision_frames=4, text={"num_hidden_layers": 1}, audio=None)
    assert cfg.vision_frames == 4 and cfg.text.num_hidden_layers == 1 and cfg.audio is None
    assert get_config("tiny").text.num_hidden_layers == 2  # presets are not mutated
    with pytest.raises(KeyError, match="tiny"):
        create_model("huge")
    with pytest.raises(TypeError):
        get_config("tiny", not_a_field=1)
    assert set(CONFIGS) == {"tiny", "vast", "vision-captioner", "audio-captioner"}


def test_create_model_attaches_a_local_tokenizer(vocab_dir, tokenizer):
    model = create_model("tiny", tokenizer=vocab_dir, text={"vocab_size": len(tokenizer)})
    ids, valid = model.tokens(["a red dog"], 10)
    assert ids[0].tolist() == tokenizer("a red dog")["input_ids"]
    with pytest.raises(ValueError, match="tokenizer"):
        create_model("tiny", tokenizer=vocab_dir, text={"cls_token_id": 101})
