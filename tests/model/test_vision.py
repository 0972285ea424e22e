from pathlib import Path

import pytest
import torch

from vast.model import load_eva_clip
from vast.model.checkpoint import load_state, map_eva_clip
from vast.model.vision import VisionConfig, drop_path, interpolate_pos_embed

REF = Path(__file__).resolve().parents[1] / "data" / "checkpoints"  # upstream layouts (names, shapes)
SMALL = VisionConfig(image_size=28, patch_size=7, width=32, depth=2, heads=4, mlp_dim=64)


def test_returns_every_token_of_every_image():
    vit = SMALL.build().eval()
    out = vit(torch.randn(3, 3, 28, 28))
    assert out.shape == (3, 1 + 16, 32)
    # the final LayerNorm (identity affine at init) is applied to every token
    assert torch.allclose(out.mean(-1), torch.zeros(3, 17), atol=1e-5)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(3, 17), atol=1e-2)


def test_attention_uses_q_and_v_bias_but_no_k_bias():
    vit = SMALL.build().eval()
    x = torch.randn(2, 5, 32)
    attn = vit.blocks[0].attn
    with torch.no_grad():
        attn.q_bias.normal_()
        attn.v_bias.normal_()
        y = attn(x)
        w = attn.qkv.weight.view(3, 32, 32)
        q = (x @ w[0].t() + attn.q_bias).view(2, 5, 4, 8).transpose(1, 2)
        k = (x @ w[1].t()).view(2, 5, 4, 8).transpose(1, 2)
        v = (x @ w[2].t() + attn.v_bias).view(2, 5, 4, 8).transpose(1, 2)
        a = ((q @ k.transpose(-1, -2)) / 8**0.5).softmax(-1) @ v
        want = attn.proj(a.transpose(1, 2).reshape(2, 5, 32))
    assert torch.allclose(y, want, atol=1e-5)


def test_other_resolutions_interpolate_the_position_embedding():
    vit = SMALL.build().eval()
    assert vit(torch.randn(1, 3, 42, 42)).shape == (1, 1 + 36, 32)
    pe = vit.pos_embed
    assert interpolate_pos_embed(pe, 4) is pe
    big = interpolate_pos_embed(pe, 8)
    assert big.shape == (1, 65, 32) and torch.equal(big[:, 0], pe[:, 0])
    const = torch.ones(1, 17, 3)
    assert torch.allclose(interpolate_pos_embed(const, 6), torch.ones(1, 37, 3))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    vit = SMALL.build().train()
    x = torch.randn(2, 3, 28, 28)
    torch.manual_seed(1)  # the same stochastic-depth draws in both passes (checkpointing replays them)
    vit(x).square().mean().backward()
    ref = [p.grad.clone() for p in vit.parameters()]
    vit.zero_grad()
    vit.grad_checkpointing = True
    torch.manual_seed(1)
    vit(x).square().mean().backward()
    for r, p in zip(ref, vit.parameters(), strict=True):
        assert torch.allclose(r, p.grad, atol=1e-6)


def test_official_eva_clip_g14_layout_loads_into_the_real_config():
    rows = [line.split("\t") for line in (REF / "evaclip_g14_checkpoint.tsv").read_text().splitlines()[1:]]
    for column in (0, 3):  # the current and the older CLIP layout
        state = {r[column].strip(): torch.empty(eval(r[1]), device="meta") for r in rows}
        with torch.device("meta"):
            vit = VisionConfig().build()
        mapped, report = map_eva_clip({"module": state}, vit)
        report = load_state(vit, mapped, report=report)
        assert report.ok and not report.fresh and report.loaded == len(vit.state_dict())
        assert len(report.ignored) == len(rows) - len(vit.state_dict())  # text tower, logit_scale, head


def test_eva_file_round_trip_with_module_prefix_and_resolution_change(tmp_path):
    torch.manual_seed(0)
    src = SMALL.build()
    state = {f"module.visual.{k}": v for k, v in src.state_dict().items()}
    state["module.visual.head.weight"] = torch.zeros(8, 32)
    state["module.text.token_embedding.weight"] = torch.zeros(10, 8)
    state["module.logit_scale"] = torch.tensor(1.0)
    torch.save({"state_dict": state}, tmp_path / "eva.pt")
    same = SMALL.build()
    report = load_eva_clip(same, tmp_path / "eva.pt")
    assert report.ok and len(report.ignored) == 3
    assert all(
        torch.equal(a, b) for a, b in zip(src.state_dict().values(), same.state_dict().values(), strict=True)
    )
    bigger = VisionConfig(**{**SMALL.__dict__, "image_size": 42}).build()
    report = load_eva_clip(bigger, tmp_path / "eva.pt")
    assert report.resized["pos_embed"] == [[1, 17, 32], [1, 37, 32]]


def test_stochastic_depth_follows_the_eva_g_rule():
    with torch.device("meta"):
        vit = VisionConfig().build()
    rates = [b.drop_path_rate for b in vit.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.4) and rates[20] == pytest.approx(0.4 * 20 / 39)
    x = torch.ones(4000, 3)
    torch.manual_seed(0)
    out = drop_path(x, 0.3, training=True)
    dropped = (out[:, 0] == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.03 and torch.allclose(out[out[:, 0] > 0], torch.full((1,), 1 / 0.7))
    assert torch.equal(drop_path(x, 0.3, training=False), x)
