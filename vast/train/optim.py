"""Optimizer and schedule as upstream VAST (``utils/build_optimizer.py``, ``utils/sched.py``).

- AdamW, betas (0.9, 0.98), eps 1e-6 (upstream's own AdamW class), weight decay 0.01.
- Weight decay by NAME as upstream: a parameter whose name contains ``bias`` or
  ``LayerNorm.weight`` is not decayed, every other one is, the contrastive temperature and the
  EVA/BEATs norm weights included. ``no_decay: "norm_bias_1d"`` (ours) also spares every
  1-d parameter and every norm.
- Learning rate: the vision tower (upstream: names with ``visual``) at ``vision_learning_rate``
  (``clip_lr``), the rest at ``learning_rate``; groups are named ``main``, ``main_no_decay``,
  ``vision``, ``vision_no_decay``.
- Schedule: step k of N (1-based) runs at peak x f(k / N), ``warmup_linear``: f(x) = x / w for
  x < w, else (1 - x) / (1 - w) (so the last step runs at 0); ``warmup_cosine``: x / w, then
  0.5 (1 + cos(pi x)).

Not reproduced: upstream's AdamW applies the decay after the Adam update (``p -= lr wd p``) where
torch's applies it before; the difference is of order lr^2 wd per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

NO_DECAY_RULES = ("upstream", "norm_bias_1d")
SCHEDULERS = ("warmup_linear", "warmup_cosine")


@dataclass
class OptimConfig:
    """AdamW with a separate vision-tower learning rate and warmup + decay."""

    learning_rate: float = 2e-5
    """Peak learning rate of everything but the vision tower (upstream: 5e-5 pretrain, 2e-5 finetune)."""
    vision_learning_rate: float = 5e-7
    """Peak learning rate of the vision tower (upstream ``clip_lr``)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    """AdamW epsilon (upstream 1e-6; torch's default is 1e-8)."""
    weight_decay: float = 0.01
    no_decay: str = "upstream"
    """Which parameters skip weight decay: ``upstream`` (names with ``bias`` or ``LayerNorm.weight``) or
    ``norm_bias_1d`` (also every norm and 1-d parameter, the temperature included)."""
    warmup_ratio: float = 0.1
    """Share of the total steps spent warming up linearly from 0."""
    scheduler: str = "warmup_linear"
    """``warmup_linear`` or ``warmup_cosine`` (upstream ``--scheduler``)."""
    grad_clip: float = 5.0
    """Max global gradient norm (0 disables; upstream's trainer has its clip call commented out)."""

    def __post_init__(self) -> None:
        if self.no_decay not in NO_DECAY_RULES:
            raise ValueError(f"optim.no_decay {self.no_decay!r}: one of {NO_DECAY_RULES}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"optim.scheduler {self.scheduler!r}: one of {SCHEDULERS}")


def decays(name: str, p: nn.Parameter, rule: str) -> bool:
    """Whether weight decay applies to parameter ``name`` under ``rule``."""
    if rule == "upstream":
        return not any(s in name for s in ("bias", "LayerNorm.bias", "LayerNorm.weight"))
    return not (p.ndim < 2 or name.endswith(".bias") or "norm" in name.lower())


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Up to four named groups: (vision tower or not) x (decay or not); frozen parameters are left out."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        vision = name.startswith("vision_encoder.")
        groups.setdefault((vision, not decays(name, p, cfg.no_decay)), []).append(p)
    return [
        {"params": ps, "lr": cfg.vision_learning_rate if vision else cfg.learning_rate,
         "weight_decay": 0.0 if no_decay else cfg.weight_decay,
         "name": f"{'vision' if vision else 'main'}{'_no_decay' if no_decay else ''}"}
        for (vision, no_decay), ps in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, cfg), betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Share of the peak rate for 0-based optimizer step ``step`` (upstream ``get_lr_sched(step + 1)``)."""
    x, w = (step + 1) / total_steps, cfg.warmup_ratio
    if x < w:
        return x / w
    if cfg.scheduler == "warmup_cosine":
        return 0.5 * (1.0 + math.cos(math.pi * x))
    return max((x - 1.0) / (w - 1.0), 0.0) if w < 1 else 1.0


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    """The upstream schedule over ``total_steps`` optimizer steps (see the module docstring)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total_steps, cfg))
