import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vast.model import load_beats
from vast.model.audio import AudioConfig, relative_position_bucket
from vast.model.checkpoint import CheckpointMismatch, load_state

REF = Path(__file__).resolve().parents[1] / "data" / "checkpoints"  # upstream layouts (names, shapes)
SMALL = AudioConfig(
    embed_dim=16,
    encoder_layers=2,
    encoder_embed_dim=32,
    encoder_ffn_embed_dim=64,
    encoder_attention_heads=4,
    conv_pos=8,
    conv_pos_groups=4,
    num_buckets=32,
    max_distance=64,
)


def test_fbank_slice_becomes_256_tokens_per_1024_frames():
    beats = SMALL.build().eval()
    assert beats(torch.randn(2, 1024, 64)).shape == (2, 256, 32)
    assert beats(torch.randn(1, 128, 64)).shape == (1, 32, 32)


def test_relative_position_table_is_shared_by_all_layers():
    beats = SMALL.build()
    tables = {id(layer.self_attn.relative_attention_bias.weight) for layer in beats.encoder.layers}
    assert len(tables) == 1
    assert sum(".relative_attention_bias." in k for k in beats.state_dict()) == SMALL.encoder_layers


def _upstream_attention(attn, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
    """BEATs MultiheadAttention as published (time-major bmm, alpha=32 stabilisation, gated bias)."""
    T, B, C = x.shape
    H, d = attn.heads, attn.head_dim
    scaling, alpha = d**-0.5, 32
    q = attn.q_proj(x) * scaling / alpha
    k, v = attn.k_proj(x), attn.v_proj(x)
    q = q.contiguous().view(T, B * H, d).transpose(0, 1)
    k = k.contiguous().view(T, B * H, d).transpose(0, 1)
    v = v.contiguous().view(T, B * H, d).transpose(0, 1)
    w = torch.bmm(q, k.transpose(1, 2))
    w = (w - w.max(dim=-1, keepdim=True)[0]) * alpha
    pb = position_bias.unsqueeze(0).repeat(B, 1, 1, 1).view(B * H, T, T)
    query_layer = q.view(B, H, T, d) * alpha / scaling
    gate_a, gate_b = torch.sigmoid(attn.grep_linear(query_layer).view(B, H, T, 2, 4).sum(-1)).chunk(2, dim=-1)
    gate_a_1 = gate_a * (gate_b * attn.grep_a - 1.0) + 2.0
    w = w + (gate_a_1.view(B * H, T, 1) * pb).view(w.size())
    out = torch.bmm(F.softmax(w, dim=-1), v).transpose(0, 1).contiguous().view(T, B, C)
    return attn.out_proj(out)


def test_attention_matches_the_published_formulation():
    torch.manual_seed(0)
    beats = SMALL.build().eval()
    with torch.no_grad():
        for p in beats.encoder.layers[0].self_attn.parameters():
            p.normal_(0, 0.3)
    attn = beats.encoder.layers[0].self_attn
    x = torch.randn(2, 20, 32)
    bias = beats.encoder.position_bias(20, x.device)
    with torch.no_grad():
        got = attn(x, bias)
        want = _upstream_attention(attn, x.transpose(0, 1), bias).transpose(0, 1)
    assert torch.allclose(got, want, atol=1e-4)


def test_relative_position_buckets():
    rel = torch.arange(-100, 101)
    b = relative_position_bucket(rel, 320, 800)
    assert b[100] == 0 and b[101] == 161 and b[99] == 1  # zero, +1 (upper half), -1
    assert (b[91:101].flip(0) == torch.arange(0, 10)).all()  # 0, -1, ..., -9: exact buckets
    assert (b[101:110] == 160 + torch.arange(1, 10)).all()  # +1 ... +9
    assert b.max() < 320 and b.min() >= 0
    # exact up to max_exact (80 of the 160 buckets per direction), logarithmic beyond
    assert relative_position_bucket(torch.tensor([700, 701]), 320, 800).unique().numel() == 1
    assert int(relative_position_bucket(torch.tensor([200]), 320, 800)) == 160 + 80 + int(
        math.log(200 / 80) / math.log(800 / 80) * 80
    )


def test_pos_conv_is_weight_normed_along_dim_2():
    beats = SMALL.build()
    conv = beats.encoder.pos_conv[0]
    names = {k for k in beats.state_dict() if k.startswith("encoder.pos_conv")}
    assert names == {"encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.pos_conv.0.bias"}
    assert conv.weight_g.shape == (1, 1, SMALL.conv_pos)
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(32, 32, 8, padding=4, groups=4), dim=2)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(conv.weight_g)
        ref.parametrizations.weight.original1.copy_(conv.weight_v)
        ref.bias.copy_(conv.bias)
        x = torch.randn(1, 32, 10)
        assert torch.allclose(conv(x), ref(x), atol=1e-5)


def test_official_beats_layout_and_cfg_load_into_the_real_config():
    info = json.loads((REF / "beats_cfg.json").read_text())
    cfg = AudioConfig.from_checkpoint_cfg(info["cfg_in_checkpoint_reconstructed"])
    assert cfg == AudioConfig()
    rows = [line.split("\t") for line in (REF / "beats_checkpoint.tsv").read_text().splitlines()[1:]]
    state = {r[0]: torch.empty(eval(r[1]), device="meta") for r in rows}
    with torch.device("meta"):
        beats = cfg.build()
    report = load_state(beats, state)
    assert report.ok and not report.fresh and report.loaded == len(rows) == 250
    assert sum(p.numel() for p in beats.parameters()) == info["params_unique"]


def test_beats_file_round_trip_and_cfg_check(tmp_path):
    torch.manual_seed(0)
    src = SMALL.build()
    cfg = {k: v for k, v in SMALL.__dict__.items() if k not in ("mel_bins", "grad_checkpointing")}
    cfg |= {
        "layer_norm_first": False,
        "relative_position_embedding": True,
        "gru_rel_pos": True,
        "dropout": 0.0,
    }
    torch.save({"cfg": cfg, "model": src.state_dict()}, tmp_path / "beats.pt")
    dst = SMALL.build()
    assert load_beats(dst, tmp_path / "beats.pt").ok
    x = torch.randn(1, 64, 64)
    assert torch.equal(src.eval()(x), dst.eval()(x))
    torch.save({"cfg": cfg | {"encoder_layers": 3}, "model": src.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointMismatch, match="cfg"):
        load_beats(dst, tmp_path / "other.pt")


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    beats = SMALL.build().train()
    x = torch.randn(2, 64, 64)
    torch.manual_seed(1)  # the same layerdrop draws in both passes
    beats(x).square().mean().backward()
    ref = [p.grad.clone() for p in beats.parameters()]
    beats.zero_grad()
    beats.encoder.grad_checkpointing = True
    torch.manual_seed(1)
    beats(x).square().mean().backward()
    for r, p in zip(ref, beats.parameters(), strict=True):
        assert torch.allclose(r, p.grad, atol=1e-6)


def test_layerdrop_skips_whole_layers_in_training_only():
    torch.manual_seed(0)
    beats = AudioConfig(**{**SMALL.__dict__, "encoder_layerdrop": 1.0}).build()
    x = torch.randn(2, 64, 64)
    beats.train()
    before = beats(x)
    with torch.no_grad():
        for layer in beats.encoder.layers:
            layer.fc2.weight.mul_(3.0)
    assert torch.equal(beats(x), before)  # every layer dropped: their weights do not matter
    beats.eval()
    assert not torch.allclose(beats(x), before)


def test_layer_wise_gradient_decay_scales_the_gradient_below_each_layer():
    """BEATs' GradMultiply before each of the L layers: the input side gets ratio**L of the gradient."""
    grads = {}
    for ratio in (1.0, 0.6):
        torch.manual_seed(0)
        beats = AudioConfig(**{**SMALL.__dict__, "layer_wise_gradient_decay_ratio": ratio,
                               "encoder_layerdrop": 0.0}).build()
        beats(torch.randn(2, 64, 64)).square().mean().backward()
        grads[ratio] = {n: p.grad.clone() for n, p in beats.named_parameters()}
    top = "encoder.layers.1.fc2.weight"  # the last layer's own parameters are above every scaling
    assert torch.allclose(grads[0.6][top], grads[1.0][top], atol=1e-7)
    low = "encoder.layers.0.fc2.weight"  # below the last layer's scaling only
    assert torch.allclose(grads[0.6][low], 0.6 * grads[1.0][low], rtol=1e-4, atol=1e-9)
    stem = "patch_embedding.weight"  # below both
    assert torch.allclose(grads[0.6][stem], 0.36 * grads[1.0][stem], rtol=1e-4, atol=1e-9)
