"""Optimizer and schedule as upstream VAST: AdamW (0.9, 0.98), wd 0.01, warmup then linear decay."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW with a separate vision-tower learning rate and warmup + linear decay."""

    learning_rate: float = 2e-5
    """Peak learning rate of everything but the vision tower (upstream: 5e-5 pretrain, 2e-5 finetune)."""
    vision_learning_rate: float = 5e-7
    """Peak learning rate of the vision tower."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    weight_decay: float = 0.01
    """Applied to weight matrices; never to biases, norms or embeddings-like 1-d parameters."""
    warmup_ratio: float = 0.1
    """Share of the total steps spent warming up linearly from 0."""
    grad_clip: float = 5.0
    """Max global gradient norm (0 disables)."""


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four groups: (vision tower or not) x (decay or not); frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        vision = name.startswith("vision_encoder.")
        no_decay = p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()
        groups.setdefault((vision, no_decay), []).append(p)
    return [
        {"params": ps, "lr": cfg.vision_learning_rate if vision else cfg.learning_rate,
         "weight_decay": 0.0 if no_decay else cfg.weight_decay, "name": f"{'vision' if vision else 'main'}"
         f"{'_no_decay' if no_decay else ''}"}
        for (vision, no_decay), ps in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, cfg), betas=tuple(cfg.betas), eps=1e-8)


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_ratio * total_steps``, then linear decay to 0 at ``total_steps``."""
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
