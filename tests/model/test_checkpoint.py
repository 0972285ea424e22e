from pathlib import Path

import pytest
import torch

from tests.model.synthetic import make_batch, tiny_model
from vast.model import (
    CheckpointMismatch,
    create_model,
    load_checkpoint,
    load_official_vast,
    load_public_towers,
    save_checkpoint,
)
from vast.model.checkpoint import load_state, map_official_vast

REF = Path(__file__).resolve().parents[1] / "data" / "checkpoints"  # upstream layouts (names, shapes)
DTYPES = {"float32": torch.float32, "int64": torch.int64}


def official_layout(vision_frames: int = 1, audio_clips: int = 2) -> dict[str, torch.Tensor]:
    """The upstream VAST state dict as meta tensors, from the reference names and shapes."""
    state = {}
    for line in (REF / "vast_model_state_dict.tsv").read_text().splitlines()[1:]:
        name, shape, dtype = line.split("\t")
        shape = eval(shape)
        if name == "vision_frame_embedding":
            shape[1] = vision_frames
        if name == "audio_frame_embedding":
            shape[1] = audio_clips
        state[name] = torch.empty(shape, dtype=DTYPES[dtype], device="meta")
    return state


def _load_meta(name: str, state: dict[str, torch.Tensor]):
    model = create_model(name, device="meta")
    mapped, report = map_official_vast(state, model)
    return model, load_state(model, mapped, report=report)


def test_official_vast_layout_loads_into_the_real_model_with_nothing_missing_or_unexpected():
    model, report = _load_meta("vast", official_layout())
    assert report.ok and not report.fresh and not report.resized
    assert report.loaded == len(model.state_dict())
    assert set(report.ignored) == {
        k
        for k in official_layout()
        if k.startswith("vision_encoder.")
        and not k.startswith("vision_encoder.visual.")
        or "visual.head." in k
    }
    # DDP prefix and legacy names load the same way
    legacy = {
        "module." + k.replace("vision_encoder.", "evaclip_model.").replace("vision", "video"): v
        for k, v in official_layout().items()
    }
    _, report = _load_meta("vast", legacy)
    assert report.ok and report.loaded == len(model.state_dict())


@pytest.mark.parametrize(
    ("name", "frames", "clips", "absent"),
    [("vision-captioner", 8, 1, "audio"), ("audio-captioner", 1, 3, "vision")],
)
def test_released_captioner_layouts_load_into_the_captioner_configs(name, frames, clips, absent):
    model, report = _load_meta(name, official_layout(frames, clips))
    assert report.ok and not report.fresh and not report.resized
    assert report.loaded == len(model.state_dict())
    assert any(absent in reason for reason in report.ignored.values())
    # the pretrain checkpoint (1 frame, 2 clips) loads too, its frame embeddings resized
    _, report = _load_meta(name, official_layout())
    assert report.ok and report.resized


def test_mismatches_are_refused_not_skipped():
    for change in ("extra", "missing", "shape"):
        state = official_layout()
        if change == "extra":
            state["contra_head_x.linear.weight"] = torch.empty(512, 768, device="meta")
        elif change == "missing":
            del state["itm_head.linear2.bias"]
        else:
            state["contra_head_t.linear.weight"] = torch.empty(256, 768, device="meta")
        with pytest.raises(
            CheckpointMismatch,
            match={"extra": "unexpected", "missing": "missing", "shape": "mismatched"}[change],
        ):
            _load_meta("vast", state)


def test_our_checkpoint_round_trip_is_exact(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(tokenizer).eval()
    with torch.no_grad():
        model.contra_temp.fill_(0.05)
    save_checkpoint(model, tmp_path / "ckpt.pt", extra={"step": 7})
    loaded = load_checkpoint(tmp_path / "ckpt.pt").eval()
    loaded.set_tokenizer(tokenizer)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    dec = loaded.multimodal_encoder
    assert dec.cls.predictions.decoder.weight is dec.bert.embeddings.word_embeddings.weight
    batch = make_batch()
    with torch.no_grad():
        torch.manual_seed(3)
        want = model(batch, "ret%tvas_cap%tv")
        torch.manual_seed(3)
        got = loaded(batch, "ret%tvas_cap%tv")
    assert all(torch.equal(want[k], got[k]) for k in want)
    again = create_model("tiny", checkpoint=tmp_path / "ckpt.pt", text={"vocab_size": len(tokenizer)})
    assert all(torch.equal(a[k], again.state_dict()[k]) for k in a)


def _to_upstream(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> the upstream file's: DDP prefix, EVA ``visual.`` tower, unused CLIP text tower."""
    out = {}
    for k, v in state.items():
        if k.startswith("vision_encoder."):
            k = "vision_encoder.visual." + k.removeprefix("vision_encoder.")
        out["module." + k] = v
    out["module.vision_encoder.text.token_embedding.weight"] = torch.zeros(10, 4)
    out["module.vision_encoder.logit_scale"] = torch.tensor(4.6)
    out["module.vision_encoder.visual.head.weight"] = torch.zeros(4, 128)
    return out


def test_official_run_directory_loads_the_latest_step_with_frame_resize(tokenizer, tmp_path):
    torch.manual_seed(0)
    src = tiny_model(tokenizer)
    ckpt = tmp_path / "run" / "ckpt"
    ckpt.mkdir(parents=True)
    torch.save(_to_upstream(src.state_dict()), ckpt / "model_step_100.pt")
    torch.save({"module.bogus": torch.zeros(1)}, ckpt / "model_step_20.pt")
    dst = tiny_model(tokenizer, vision_frames=4)
    report = load_official_vast(dst, tmp_path / "run")
    assert report.ok and len(report.ignored) == 3
    assert report.resized["vision_frame_embedding"] == [[1, 2, 128], [1, 4, 128]]
    a, b = src.state_dict(), dst.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k != "vision_frame_embedding")
    assert torch.equal(b["vision_frame_embedding"], a["vision_frame_embedding"][:, [0, 0, 1, 1]])
    with pytest.raises(CheckpointMismatch, match="bogus"):
        load_official_vast(dst, ckpt / "model_step_20.pt")
    via_factory = create_model(
        "tiny", checkpoint=tmp_path / "run", vision_frames=4, text={"vocab_size": len(tokenizer)}
    )
    assert all(torch.equal(v, via_factory.state_dict()[k]) for k, v in b.items())
    # a higher resolution resizes the EVA position embedding (CLS row kept)
    hi_res = tiny_model(tokenizer, vision={"image_size": 48})
    report = load_official_vast(hi_res, ckpt / "model_step_100.pt")
    assert report.resized["vision_encoder.pos_embed"] == [[1, 17, 128], [1, 37, 128]]
    assert torch.equal(hi_res.vision_encoder.pos_embed[:, 0], src.vision_encoder.pos_embed[:, 0])


def test_public_tower_files_initialise_a_fresh_model(tokenizer, tmp_path):
    torch.manual_seed(0)
    src = tiny_model(tokenizer)
    torch.save({"visual." + k: v for k, v in src.vision_encoder.state_dict().items()}, tmp_path / "eva.pt")
    beats_cfg = {
        k: v for k, v in src.cfg.audio.__dict__.items() if k not in ("mel_bins", "grad_checkpointing")
    }
    torch.save({"cfg": beats_cfg, "model": src.audio_encoder.state_dict()}, tmp_path / "beats.pt")
    bert = {k: v for k, v in src.multimodal_encoder.state_dict().items() if ".crossattention." not in k}
    (tmp_path / "bert").mkdir()
    torch.save(bert, tmp_path / "bert" / "pytorch_model.bin")
    dst = tiny_model(tokenizer)
    reports = load_public_towers(dst, tmp_path / "eva.pt", tmp_path / "beats.pt", tmp_path / "bert")
    assert all(r.ok for r in reports.values())
    assert reports["multimodal_encoder"].fresh and all(
        ".crossattention." in k for k in reports["multimodal_encoder"].fresh
    )
    for tower in ("vision_encoder", "audio_encoder"):
        a, b = getattr(src, tower).state_dict(), getattr(dst, tower).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="no audio tower"):
        load_public_towers(tiny_model(tokenizer, audio=None), beats=tmp_path / "beats.pt")
