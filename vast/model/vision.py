"""EVA-CLIP vision tower (EVA01-CLIP-g/14 and smaller siblings).

Parameter names follow the ``visual.*`` part of ``EVA01_CLIP_g_14_psz14_s11B.pt`` without the
``visual.`` prefix: ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.{norm1, attn.{qkv,
q_bias, v_bias, proj}, norm2, mlp.{fc1, fc2}}``, ``norm``. The CLIP projection ``visual.head`` is
not built: VAST uses every token after the final norm, never the pooled CLIP embedding.

Training regularisation follows the EVA01-CLIP-g-14 config upstream VAST builds
(``model/vision_encoders/evaclip/model_configs/EVA01-CLIP-g-14.json``, ``eva_vit_model.py``):
stochastic depth with rate ``drop_path_rate`` * i / (depth - 1) in block i, per sample, scaled
by 1 / keep; off at eval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class VisionConfig:
    """Shape of an EVA-CLIP ViT visual tower."""

    image_size: int = 224
    """Input resolution the position embedding is stored for (other sizes are interpolated)."""
    patch_size: int = 14
    width: int = 1408
    depth: int = 40
    heads: int = 16
    mlp_dim: int = 6144
    norm_eps: float = 1e-6
    drop_path_rate: float = 0.4
    """Stochastic depth of the last block in training (linear from 0 in the first; EVA01-g: 0.4)."""
    grad_checkpointing: bool = False
    """Recompute each block in the backward pass (saves activation memory)."""

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def build(self) -> EVAVisionTransformer:
        return EVAVisionTransformer(self)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, 3, H, W) -> (B, N, C)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv matrix and separate q/v biases (k bias is zero)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(cfg.width))
        self.v_bias = nn.Parameter(torch.zeros(cfg.width))
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(B, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d) each
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for a random p of the samples, scale the rest by 1/(1-p)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * (keep.div_(1 - p) if p < 1 else keep)


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig, drop_path_rate: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.drop_path_rate
        x = x + drop_path(self.attn(self.norm1(x)), p, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), p, self.training)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a (1, 1 + g*g, C) ViT position embedding to ``grid``×``grid`` patches, bilinearly.

    The CLS row is kept as is; only the patch grid is resampled (as upstream VAST does at load).
    """
    n_old = pos_embed.shape[1] - 1
    old = math.isqrt(n_old)
    if old * old != n_old:
        raise ValueError(f"position embedding with {n_old} patch rows is not a square grid")
    if old == grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()  # (1, C, g, g)
    patches = F.interpolate(patches, size=(grid, grid), mode="bilinear", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(pos_embed.dtype)
    return torch.cat([cls, patches], dim=1)


class EVAVisionTransformer(nn.Module):
    """EVA-CLIP ViT returning every token (CLS first) after the final LayerNorm."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, cfg.width))
        # EVA's rule (torch.linspace(0, rate, depth)), in Python so a meta-device build works too
        rates = [cfg.drop_path_rate * i / max(1, cfg.depth - 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.grad_checkpointing = cfg.grad_checkpointing
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal init as in EVA (std 0.02); weights are normally loaded from a checkpoint."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode normalised images (B, 3, H, W) into tokens (B, 1 + (H/p)*(W/p), C)."""
        x = self.patch_embed(images.to(self.pos_embed.dtype))  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        grid = images.shape[-1] // self.cfg.patch_size
        if images.shape[-2] != images.shape[-1]:
            raise ValueError(f"square images expected, got {tuple(images.shape[-2:])}")
        x = x + interpolate_pos_embed(self.pos_embed, grid).to(x.dtype)
        for block in self.blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)
