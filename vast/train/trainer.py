"""The VAST trainer: pretraining on VAST-27M-style shards and finetuning for retrieval, captioning, QA.

``train(cfg)`` reads top to bottom: distributed setup -> model (towers frozen, gradient
checkpointing) -> optimizer and schedule -> resume from the latest checkpoint (weights, optimizer,
schedule, step, RNG and the reader's data position) -> loop of ``grad_accum`` micro-batches per
step under autocast -> periodic validation and checkpoints -> final evaluation. Metrics go to the
console and to ``<output>/log.jsonl`` (one JSON object per line).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vast.shards.reader import DataPosition, ReaderConfig, ShardStream, expand_urls, make_loader
from vast.train.config import ModelConfig, TrainConfig, decode_spec
from vast.train.optim import build_optimizer, build_scheduler

# ------------------------------------------------------------------ distributed


def init_distributed(backend: str = "") -> tuple[int, int, torch.device]:
    """(rank, world, device); joins the torchrun process group when ``WORLD_SIZE`` > 1.

    Under Ray Train the group already exists (``TorchTrainer`` sets it up) and is used as is.
    """
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return (dist.get_rank() if dist.is_initialized() else 0), world, device


def backend_needs_device() -> bool:
    """nccl collectives take CUDA tensors; gloo takes CPU ones."""
    return dist.is_initialized() and dist.get_backend() == "nccl"


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ------------------------------------------------------------------ building blocks


def build_model(cfg: ModelConfig, device: torch.device) -> Any:
    """The VAST model with tokenizer attached, initial weights loaded, towers frozen as configured."""
    from vast.model import create_model

    if cfg.tokenizer is None:
        raise ValueError("model.tokenizer: a directory with the BERT vocab.txt is required")
    model = create_model(cfg.name, checkpoint=cfg.init, tokenizer=cfg.tokenizer, **dict(cfg.overrides))
    if cfg.frozen_vision and model.vision_encoder is not None:
        model.vision_encoder.requires_grad_(False)
    model.set_grad_checkpointing(cfg.checkpointing)
    return model.to(device)


def count_samples(reader: ReaderConfig) -> int:
    """Samples of a reader's corpora, from the parquet manifest next to each shard."""
    import fsspec
    import pyarrow.parquet as pq

    total = 0
    for corpus in reader.corpora:
        for url in expand_urls(corpus.urls):
            with fsspec.open(url.removesuffix(".tar") + ".parquet", "rb") as f:
                total += pq.ParquetFile(f).metadata.num_rows
    return total


def total_steps(cfg: TrainConfig, world: int) -> int:
    """``train_steps``, or ``train_epoch`` epochs of the training set at the global batch size."""
    if cfg.train_steps > 0:
        return cfg.train_steps
    if cfg.train_epoch <= 0:
        raise ValueError("set train_steps or train_epoch")
    samples = cfg.data.epoch_samples or count_samples(cfg.data.train)
    return max(1, math.ceil(cfg.train_epoch * samples / (cfg.train_batch_size * world * cfg.grad_accum)))


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward pass."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


class MetricLog:
    """Console lines plus ``log.jsonl`` (main process only)."""

    def __init__(self, output: str):
        self.path = Path(output) / "log.jsonl"

    def write(self, record: dict[str, Any]) -> None:
        if not is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        shown = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        print(shown, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ checkpoints


def checkpoint_path(output: str, step: int) -> Path:
    return Path(output) / "ckpt" / f"step_{step:08d}.pt"


def latest_checkpoint(output: str) -> Path | None:
    steps = sorted(Path(output, "ckpt").glob("step_*.pt"))
    return steps[-1] if steps else None


def gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` outside a process group)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def save_state(path: Path, model: Any, opt: torch.optim.Optimizer, sched: Any, scaler: Any, step: int,
               data: DataPosition) -> None:
    """Weights (our checkpoint format) plus optimizer, schedule, step, and per rank RNG and data position.

    Every rank must call it (positions are gathered); the main process writes the file.
    """
    from vast.model import save_checkpoint

    data_by_rank = gather(data.state_dict())
    rng_by_rank = gather(torch.get_rng_state())
    if is_main():
        extra = {"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict() if scaler is not None else None, "data": data_by_rank[0],
                 "data_by_rank": data_by_rank, "rng_by_rank": rng_by_rank}
        save_checkpoint(model, path, extra=extra)
    barrier()


def load_state(path: Path, model: Any, opt: torch.optim.Optimizer, sched: Any, scaler: Any
               ) -> tuple[int, DataPosition]:
    """Restore everything :func:`save_state` wrote; returns (step, data position)."""
    from vast.model.checkpoint import load_state as load_weights

    blob = torch.load(path, map_location="cpu", weights_only=True)
    load_weights(model, blob["model"])
    extra = blob["extra"]
    opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    if scaler is not None and extra.get("scaler"):
        scaler.load_state_dict(extra["scaler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    if len(extra["data_by_rank"]) != (dist.get_world_size() if dist.is_initialized() else 1):
        raise ValueError(f"{path} was written by {len(extra['data_by_rank'])} processes; resume with as many")
    torch.set_rng_state(extra["rng_by_rank"][rank])
    return int(extra["step"]), DataPosition(extra["data_by_rank"][rank])


# ------------------------------------------------------------------ the loop


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or, with ``mode: testing``, evaluate) as configured; returns the last metrics."""
    from vast.train.evaluate import evaluate

    rank, world, device = init_distributed(cfg.backend)
    torch.manual_seed(cfg.seed)
    log = MetricLog(cfg.output)
    if is_main():
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        from vast.config import to_dict

        (Path(cfg.output) / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    model = build_model(cfg.model, device)
    test_task = cfg.test_task or cfg.train_task

    if cfg.mode == "testing":
        if cfg.checkpoint is None:
            raise ValueError("testing mode needs checkpoint: PATH")
        from vast.model.checkpoint import load_state as load_weights

        load_weights(model, torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)["model"])
        metrics = evaluate(model, cfg, test_task) if is_main() else {}
        log.write({"mode": "testing", "checkpoint": cfg.checkpoint, **metrics})
        barrier()
        return metrics
    if cfg.mode != "training":
        raise ValueError(f"mode must be training or testing, got {cfg.mode!r}")

    # optimizer, schedule, resume
    steps = total_steps(cfg, world)
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    step, position = 0, DataPosition()
    log.write({"run": "training", "world": world, "steps": steps, "device": str(device),
               "task": cfg.train_task})
    last = latest_checkpoint(cfg.output)
    if last is not None:
        step, position = load_state(last, model, opt, sched, scaler)
        log.write({"resumed": str(last), "step": step})
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    # data: one deterministic stream per rank, positioned where the checkpoint left it
    def batches_from(position: DataPosition) -> Any:
        spec = decode_spec(cfg, True, cfg.train_task)
        return iter(make_loader(ShardStream(cfg.data.train, spec, cfg.train_batch_size, rank=rank,
                                            world=world, epoch=position.epoch, resume=position.state_dict())))

    def next_batch() -> dict[str, Any]:
        nonlocal batches
        batch = next(batches, None)
        ended = batch is None
        if world > 1 and not cfg.data.train.resampled:  # every rank moves to the next epoch together
            flag = torch.tensor([float(ended)], device=device if backend_needs_device() else "cpu")
            dist.all_reduce(flag)
            ended = bool(flag.item() > 0)
        if ended:  # an epoch-exact stream ended: start the next epoch
            position.next_epoch()
            batches = batches_from(position)
            batch = next(batches, None)
            if batch is None:
                raise ValueError(f"rank {rank} has no training data: fewer shards than ranks x workers "
                                 f"or fewer samples than a batch")
        return batch

    batches = batches_from(position)
    metrics: dict[str, Any] = {}
    model.train()
    while step < steps:
        t0 = time.perf_counter()
        wait = 0.0
        losses: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            tw = time.perf_counter()
            batch = next_batch()
            wait += time.perf_counter() - tw
            position.update(batch)
            sync = micro == cfg.grad_accum - 1
            with (ddp.no_sync() if world > 1 and not sync else contextlib.nullcontext()):
                with autocast(cfg.precision, device):
                    out = ddp(batch, cfg.train_task)
                loss = out["loss"] / cfg.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
            for k, v in out.items():
                losses[k] = losses.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        if scaler is not None:
            scaler.unscale_(opt)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1

        if step % cfg.log_freq == 0 or step == steps or step == 1:
            elapsed = time.perf_counter() - t0
            log.write({"step": step, **losses, "lr": sched.get_last_lr()[-1], "step_s": elapsed,
                       "data_wait_share": wait / elapsed, "skipped_samples": position.skipped})
        if cfg.save_freq and step % cfg.save_freq == 0 and step < steps:
            save_state(checkpoint_path(cfg.output, step), model, opt, sched, scaler, step, position)
        if cfg.valid_freq and step % cfg.valid_freq == 0 and step < steps and cfg.data.valid is not None:
            metrics = evaluate(model, cfg, test_task) if is_main() else {}
            log.write({"valid_step": step, **metrics})
            barrier()
            model.train()

    save_state(checkpoint_path(cfg.output, step), model, opt, sched, scaler, step, position)
    if cfg.data.valid is not None:
        metrics = evaluate(model, cfg, test_task) if is_main() else {}
        log.write({"valid_step": step, **metrics})
        barrier()
    return metrics
