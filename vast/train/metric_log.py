"""Where training metrics go: the console, ``<output>/log.jsonl``, TensorBoard event files beside
it, and Weights & Biases when configured. Only the main process writes.

``record(r)`` writes one JSON line and a console line; ``scalars(step, values)`` feeds the curves
(TensorBoard, W&B) every step. Keys with a ``/`` group curves in TensorBoard (``lr/main``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from vast.config import to_dict


class MetricLog:
    """Console lines plus ``log.jsonl``, TensorBoard and W&B sinks (main process only)."""

    def __init__(self, cfg: Any, main: bool):
        self.main = main
        self.path = Path(cfg.output) / "log.jsonl"
        self.tb = None
        self.wandb = None
        if not main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("tensorboard: TensorBoard logging needs the tensorboard package "
                                  "(pip install tensorboard) or tensorboard: false") from e
            self.tb = SummaryWriter(log_dir=str(self.path.parent))
        if cfg.wandb is not None and cfg.wandb.mode != "disabled":
            try:
                import wandb
            except ImportError as e:
                raise ImportError("wandb: W&B logging needs `pip install wandb` (or no wandb key)") from e
            w = cfg.wandb
            self.wandb = wandb.init(project=w.project, entity=w.entity, name=w.name or Path(cfg.output).name,
                                    mode=w.mode, dir=str(self.path.parent), config=to_dict(cfg),
                                    resume="allow")

    def record(self, record: dict[str, Any]) -> None:
        """One line in ``log.jsonl`` and on the console."""
        if not self.main:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        print(shown, file=sys.stderr, flush=True)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Curves: one point per key at ``step`` (TensorBoard, W&B)."""
        if not self.main:
            return
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
