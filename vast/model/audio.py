"""BEATs audio encoder (iter3+ AS2M shape) and its Kaldi-fbank front end.

Parameter names follow ``checkpoint["model"]`` of ``BEATs_iter3_plus_AS2M.pt``. The attention is
the BEATs one (gated relative position bias, deep-norm residuals) computed with SDPA: the
upstream max-subtraction trick is a softmax shift and leaves the result unchanged.

Training follows the checkpoint's ``cfg`` as upstream VAST runs it
(``model/audio_encoders/beats/beats.py::TransformerEncoder.extract_features``): before each
layer the gradient flowing back is scaled by ``layer_wise_gradient_decay_ratio`` (0.6), and in
training each layer is skipped for the whole batch with probability ``encoder_layerdrop`` (0.05).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

FBANK_MEAN = 15.41663
FBANK_STD = 6.55582
SAMPLE_RATE = 16_000


@dataclass
class AudioConfig:
    """Shape of a BEATs encoder; field names are those of the BEATs checkpoint ``cfg``."""

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    conv_pos: int = 128
    conv_pos_groups: int = 16
    num_buckets: int = 320
    max_distance: int = 800
    deep_norm: bool = True
    encoder_layerdrop: float = 0.05
    """Probability of skipping a layer for a whole training batch (the BEATs iter3+ cfg value)."""
    layer_wise_gradient_decay_ratio: float = 0.6
    """Gradient scale applied in front of each layer on the way back (1.0 disables it)."""
    mel_bins: int = 64
    grad_checkpointing: bool = False

    @classmethod
    def from_checkpoint_cfg(cls, cfg: dict[str, Any], **overrides: Any) -> AudioConfig:
        """Build from a BEATs checkpoint ``cfg`` dict, keeping only the fields that shape the model."""
        names = {f.name for f in fields(cls)}
        required = {"layer_norm_first": False, "relative_position_embedding": True, "gru_rel_pos": True}
        unsupported = {k: cfg[k] for k, v in required.items() if k in cfg and cfg[k] != v}
        if unsupported:
            raise ValueError(f"BEATs variant not supported: {unsupported}")
        return cls(**{**{k: v for k, v in cfg.items() if k in names}, **overrides})

    def build(self) -> BEATs:
        return BEATs(self)


def kaldi_fbank(waveform: torch.Tensor, mel_bins: int = 64) -> torch.Tensor:
    """BEATs front end: 16 kHz mono waveform (S,) in [-1, 1] -> normalised fbank (frames, mel_bins).

    25 ms window, 10 ms shift, waveform scaled by 2^15, normalised (x - 15.41663) / (2 * 6.55582).
    """
    import torchaudio.compliance.kaldi as kaldi

    wav = waveform.float().reshape(1, -1) * 2**15
    if wav.shape[1] < 400:  # shorter than one 25 ms window: pad so one frame exists
        wav = F.pad(wav, (0, 400 - wav.shape[1]))
    fbank = kaldi.fbank(
        wav, num_mel_bins=mel_bins, sample_frequency=SAMPLE_RATE, frame_length=25, frame_shift=10
    )
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)


class WeightNormConv1d(nn.Module):
    """Conv1d stored as ``weight_g``/``weight_v`` (legacy ``weight_norm(dim=2)`` layout of BEATs)."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        v = torch.randn(channels, channels // groups, kernel) * math.sqrt(4 / (kernel * channels))
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(0, 1), keepdim=True))  # (1, 1, K)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v
        weight = v * (self.weight_g / v.norm(dim=(0, 1), keepdim=True))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


def relative_position_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5-style bidirectional log buckets of relative positions ``rel`` (key - query)."""
    num_buckets //= 2
    buckets = (rel > 0).long() * num_buckets
    rel = rel.abs()
    max_exact = num_buckets // 2
    large = (
        max_exact
        + (
            torch.log(rel.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (num_buckets - max_exact)
        ).long()
    )
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(rel < max_exact, rel, large)


class SelfAttention(nn.Module):
    """BEATs attention: relative position bias gated per head and per query (gru_rel_pos)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        C, H = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.heads, self.head_dim = H, C // H
        self.relative_attention_bias = nn.Embedding(cfg.num_buckets, H)  # shared by all layers
        self.k_proj = nn.Linear(C, C)
        self.v_proj = nn.Linear(C, C)
        self.q_proj = nn.Linear(C, C)
        self.out_proj = nn.Linear(C, C)
        self.grep_linear = nn.Linear(self.head_dim, 8)
        self.grep_a = nn.Parameter(torch.ones(1, H, 1, 1))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)
        k = self.k_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        gate = torch.sigmoid(self.grep_linear(q).view(B, self.heads, T, 2, 4).sum(-1))  # (B, H, T, 2)
        gate_a, gate_b = gate.unbind(-1)
        gate = (gate_a * (gate_b * self.grep_a.squeeze(-1) - 1.0) + 2.0).unsqueeze(-1)  # (B, H, T, 1)
        bias = (gate * position_bias).to(q.dtype)  # (B, H, T, T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class EncoderLayer(nn.Module):
    """Post-norm transformer layer with deep-norm residual scaling."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.self_attn = SelfAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.encoder_embed_dim, eps=1e-5)
        self.fc1 = nn.Linear(cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, cfg.encoder_embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.encoder_embed_dim, eps=1e-5)
        self.alpha = math.pow(2 * cfg.encoder_layers, 1 / 4) if cfg.deep_norm else 1.0

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, position_bias))
        return self.final_layer_norm(x * self.alpha + self.fc2(F.gelu(self.fc1(x))))


class GradScale(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``scale`` (BEATs' ``GradMultiply``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


class Encoder(nn.Module):
    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        # Sequential only for the checkpoint names encoder.pos_conv.0.{weight_g, weight_v, bias}
        self.pos_conv = nn.Sequential(
            WeightNormConv1d(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups)
        )
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        for layer in self.layers[1:]:  # one table for all layers, as in BEATs
            layer.self_attn.relative_attention_bias = self.layers[0].self_attn.relative_attention_bias
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim, eps=1e-5)
        self.grad_checkpointing = cfg.grad_checkpointing

    def position_bias(self, T: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(T, device=device)
        buckets = relative_position_bucket(
            pos[None, :] - pos[:, None], self.cfg.num_buckets, self.cfg.max_distance
        )
        return self.layers[0].self_attn.relative_attention_bias(buckets).permute(2, 0, 1)  # (H, T, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        x_conv = F.gelu(self.pos_conv(x.transpose(1, 2))[..., :T])  # even kernel: drop the extra step
        x = self.layer_norm(x + x_conv.transpose(1, 2))
        bias = self.position_bias(x.shape[1], x.device)
        decay, drop = self.cfg.layer_wise_gradient_decay_ratio, self.cfg.encoder_layerdrop
        for layer in self.layers:
            if decay != 1.0 and torch.is_grad_enabled():
                x = GradScale.apply(x, decay)
            if self.training and drop > 0 and torch.rand(()).item() < drop:
                continue  # layerdrop: the whole batch skips this layer
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, bias, use_reentrant=False)
            else:
                x = layer(x, bias)
        return x


class BEATs(nn.Module):
    """BEATs encoder: fbank (B, frames, mel) -> tokens (B, frames/16 * mel/16, encoder_embed_dim)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.input_patch_size
        self.post_extract_proj = nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim)
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.encoder = Encoder(cfg)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim, eps=1e-5)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT-style init (normal 0.02) with deep-norm gains, as BEATs initialises."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        if self.cfg.deep_norm:
            beta = math.pow(8 * self.cfg.encoder_layers, -1 / 4)
            for layer in self.encoder.layers:
                a = layer.self_attn
                nn.init.xavier_normal_(a.k_proj.weight, gain=1)
                nn.init.xavier_normal_(a.q_proj.weight, gain=1)
                nn.init.xavier_normal_(a.v_proj.weight, gain=beta)
                nn.init.xavier_normal_(a.out_proj.weight, gain=beta)
                nn.init.xavier_normal_(layer.fc1.weight, gain=beta)
                nn.init.xavier_normal_(layer.fc2.weight, gain=beta)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """Encode normalised fbank slices (B, frames, mel_bins) into tokens (B, N, C)."""
        x = self.patch_embedding(
            fbank.unsqueeze(1).to(self.patch_embedding.weight.dtype)
        )  # (B, 512, F/16, M/16)
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # (B, N, 512), time-major patches
        return self.encoder(self.post_extract_proj(x))  # (B, N, C)
