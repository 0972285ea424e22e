"""Launch the trainer under Ray Train: one ``train()`` per Ray worker, DDP over Ray's process group.

Local Ray by default (``ray.init()``), a cluster through ``address`` / ``RAY_ADDRESS``. Each worker
runs the same :func:`vast.train.trainer.train` as ``torchrun`` would; Ray's ``TorchTrainer`` sets up
the process group (gloo on CPU, nccl on GPU) so the trainer only joins it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vast.config import from_dict, to_dict
from vast.train.config import TrainConfig


@dataclass
class RayTrainConfig:
    """Where and how wide the Ray Train run is."""

    num_workers: int = 2
    """Training processes (one GPU each with ``use_gpu``)."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    address: str | None = None
    """Ray cluster address; None: ``RAY_ADDRESS`` or an embedded local Ray."""
    storage_path: str | None = None
    """Ray Train's run storage (defaults to ``<output>/ray``)."""


def _worker_loop(config: dict[str, Any]) -> None:
    from vast.train.trainer import train

    train(from_dict(TrainConfig, config))


def train_with_ray(cfg: TrainConfig, ray_cfg: RayTrainConfig) -> None:
    """Run ``train(cfg)`` on ``ray_cfg.num_workers`` Ray Train workers (DDP)."""
    import os

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init(address=ray_cfg.address, include_dashboard=False, ignore_reinit_error=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=to_dict(cfg),
        torch_config=TorchConfig(backend=cfg.backend or ("nccl" if ray_cfg.use_gpu else "gloo")),
        scaling_config=ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu,
                                     resources_per_worker={"CPU": ray_cfg.cpus_per_worker}),
        run_config=RunConfig(storage_path=os.path.abspath(ray_cfg.storage_path or f"{cfg.output}/ray"),
                             name="vast-train"),
    )
    trainer.fit()
