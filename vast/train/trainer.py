"""The VAST trainer: pretraining on VAST-27M-style shards and finetuning for retrieval, captioning, QA.

``train(cfg)`` reads top to bottom: distributed setup -> model (towers frozen, gradient
checkpointing) -> optimizer and schedule -> resume from the latest checkpoint (weights, optimizer,
schedule, step, RNG and the reader's data position) -> loop of ``grad_accum`` micro-batches per
step under autocast -> gradient norm (clipped at ``optim.grad_clip``; a non-finite norm skips the
update, is counted and logged, never applied) -> periodic validation and checkpoints -> final
evaluation. Metrics go to the console, ``<output>/log.jsonl`` (one JSON object per line),
TensorBoard event files beside it and W&B when configured; per-group learning rates are logged
under their group names. One run per output directory (a lock file).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vast.model.tasks import parse_task
from vast.shards.reader import (
    DataPosition,
    ReaderConfig,
    ShardStream,
    expand_urls,
    make_loader,
    samples_of,
    shard_sample_counts,
)
from vast.train.config import ModelConfig, TrainConfig, decode_spec
from vast.train.metric_log import MetricLog
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
    """The VAST model with tokenizer attached, initial weights loaded, towers frozen as configured.

    Weights load as upstream builds a run: the public towers (EVA-CLIP, BEATs, BERT) when given,
    then ``init`` (a VAST checkpoint) over them.
    """
    from vast.model import create_model, load_public_towers, load_weights

    if cfg.tokenizer is None:
        raise ValueError("model.tokenizer: a directory with the BERT vocab.txt is required")
    model = create_model(cfg.name, tokenizer=cfg.tokenizer, **dict(cfg.overrides))
    if cfg.init is None and (cfg.eva_clip or cfg.beats or cfg.bert):  # a VAST checkpoint holds every tower
        load_public_towers(model, cfg.eva_clip, cfg.beats, cfg.bert)
    if cfg.init is not None:
        load_weights(model, cfg.init)
    for frozen, tower in ((cfg.frozen_vision, model.vision_encoder), (cfg.frozen_audio, model.audio_encoder)):
        if frozen and tower is not None:
            tower.requires_grad_(False)
    model.set_grad_checkpointing(cfg.checkpointing)
    return model.to(device)


def count_samples(reader: ReaderConfig) -> int:
    """Samples of a reader's corpora, from the parquet manifest next to each shard."""
    total = 0
    for corpus in reader.corpora:
        urls = expand_urls(corpus.urls)
        counts = shard_sample_counts(urls)
        missing = [u for u, n in zip(urls, counts, strict=True) if n is None]
        if missing:
            raise ValueError(f"no parquet manifest beside {missing[0]} to count an epoch: set train_steps "
                             f"or data.epoch_samples")
        total += sum(n for n in counts if n is not None)
    return total


def micro_batch(cfg: TrainConfig, world: int) -> int:
    """Samples per process and micro-batch: the global ``train_batch_size`` / (world x grad_accum)."""
    parts = world * cfg.grad_accum
    if cfg.train_batch_size % parts:
        raise ValueError(f"train_batch_size {cfg.train_batch_size} is the global batch (as upstream): "
                         f"it must divide by world size x grad_accum = {world} x {cfg.grad_accum}")
    return cfg.train_batch_size // parts


def total_steps(cfg: TrainConfig, world: int) -> int:
    """``train_steps``, or upstream's ``int(samples // train_batch_size * train_epoch)`` (global batch)."""
    if cfg.train_steps > 0:
        return cfg.train_steps
    if cfg.train_epoch <= 0:
        raise ValueError("set train_steps or train_epoch")
    samples = cfg.data.epoch_samples or count_samples(cfg.data.train)
    return max(1, int(samples // cfg.train_batch_size * cfg.train_epoch))


def validation_steps(cfg: TrainConfig, steps: int) -> set[int]:
    """Steps (1-based) after which to validate: every ``valid_steps``, or upstream's ``valid_freq`` rule.

    Upstream (``utils/build_dataloader.py``, ``utils/pipeline.py``): ``valid_steps = steps //
    valid_freq - 1`` and a validation after step s when ``(s + 1) % valid_steps == 0``. The end of
    the run always validates too.
    """
    if cfg.valid_steps > 0:
        return set(range(cfg.valid_steps, steps + 1, cfg.valid_steps)) | {steps}
    if cfg.valid_freq <= 0:
        return {steps}
    every = max(1, steps // cfg.valid_freq - 1)
    return {s for s in range(1, steps + 1) if (s + 1) % every == 0} | {steps}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed-precision context for the forward pass."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype)


def lock_output(output: str, device: torch.device) -> Any:
    """One run per training output directory: rank 0 holds the lock file, every rank learns the outcome."""
    from vast.shards.store import OutputLocked, lock_folder

    held, error = None, ""
    if is_main():
        Path(output).mkdir(parents=True, exist_ok=True)
        try:
            held = lock_folder(output, "training run")
        except OutputLocked as e:
            error = str(e)
    if dist.is_initialized():
        flag = torch.tensor([float(bool(error))], device=device if backend_needs_device() else "cpu")
        dist.all_reduce(flag)
        if flag.item() and not error:
            error = f"another training run holds {output}"
    if error:
        raise OutputLocked(error)
    return held


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
    from vast.model.checkpoint import load_state as load_model_state

    blob = torch.load(path, map_location="cpu", weights_only=True)
    load_model_state(model, blob["model"])
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
    owns_group = not (dist.is_available() and dist.is_initialized())  # Ray Train brings its own
    rank, world, device = init_distributed(cfg.backend)
    torch.manual_seed(cfg.seed)
    if is_main():
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
    lock = lock_output(cfg.output, device)
    log = MetricLog(cfg, is_main())
    try:
        metrics = _run(cfg, rank, world, device, log)
        barrier()  # every rank is done with the group before any rank tears it down
        return metrics
    finally:
        log.close()
        if lock is not None:
            lock.close()
        if owns_group and dist.is_initialized():
            # the group this process created ends with it (Ray Train's is Ray Train's to end)
            dist.destroy_process_group()


def _evaluate(model: Any, cfg: TrainConfig, task: str) -> dict[str, Any]:
    """Evaluation on rank 0 while the others wait."""
    from vast.train.evaluate import evaluate

    metrics = evaluate(model, cfg, task) if is_main() else {}
    barrier()
    return metrics


def _run(cfg: TrainConfig, rank: int, world: int, device: torch.device, log: MetricLog) -> dict[str, Any]:
    from vast.config import to_dict
    from vast.model import load_weights
    from vast.train.evaluate import headline

    if is_main():
        (Path(cfg.output) / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    model = build_model(cfg.model, device)
    test_task = cfg.test_task or cfg.train_task

    if cfg.mode == "testing":
        if cfg.checkpoint is None:
            raise ValueError("testing mode needs checkpoint: PATH")
        load_weights(model, cfg.checkpoint)
        metrics = _evaluate(model, cfg, test_task)
        log.record({"mode": "testing", "checkpoint": cfg.checkpoint, **metrics})
        return metrics
    if cfg.mode != "training":
        raise ValueError(f"mode must be training or testing, got {cfg.mode!r}")

    # optimizer, schedule, resume
    steps = total_steps(cfg, world)
    batch_size = micro_batch(cfg, world)
    opt = build_optimizer(model, cfg.optim)
    sched = build_scheduler(opt, cfg.optim, steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    step, position = 0, DataPosition()
    metrics: dict[str, Any] = {}
    log.record({"run": "training", "world": world, "steps": steps, "device": str(device),
                "task": cfg.train_task, "batch_per_process": batch_size})
    last = latest_checkpoint(cfg.output)
    if last is not None:
        step, position = load_state(last, model, opt, sched, scaler)
        log.record({"resumed": str(last), "step": step})
    elif (cfg.first_eval or cfg.zero_shot) and cfg.data.valid is not None:
        metrics = _evaluate(model, cfg, test_task)
        log.record({"valid_step": 0, **metrics})
        log.scalars(0, {f"valid/{k}": v for k, v in metrics.items()})
        model.train()
    if cfg.zero_shot:
        return metrics
    ddp = model
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)

    # data: one deterministic stream per rank, positioned where the checkpoint left it
    def batches_from(position: DataPosition) -> Any:
        spec = decode_spec(cfg, True, cfg.train_task)
        return iter(make_loader(ShardStream(cfg.data.train, spec, batch_size, rank=rank,
                                            world=world, epoch=position.epoch, resume=position.state_dict())))

    def next_batch() -> dict[str, Any]:
        nonlocal batches
        while True:
            batch = next(batches, None)
            if batch is not None and not samples_of(batch):  # losses after a worker's last batch
                note_losses(position.update(batch))
                continue
            ended = batch is None
            if world > 1 and not cfg.data.train.resampled:  # every rank moves to the next epoch together
                flag = torch.tensor([float(ended)], device=device if backend_needs_device() else "cpu")
                dist.all_reduce(flag)
                ended = bool(flag.item() > 0)
            if not ended:
                return batch
            # an epoch-exact stream ended: start the next epoch
            position.next_epoch()
            batches = batches_from(position)
            batch = next(batches, None)
            while batch is not None and not samples_of(batch):
                note_losses(position.update(batch))
                batch = next(batches, None)
            if batch is None:
                raise ValueError(f"rank {rank} has no training data: fewer samples than ranks x batch "
                                 f"({world} x {batch_size}), or every sample is corrupt")
            return batch

    def note_losses(shards: dict[str, int | None]) -> None:
        for url, lost in shards.items():
            log.record({"step": step, "corrupt_shard": url,
                        "samples_lost": "unknown (no manifest)" if lost is None else lost})

    batches = batches_from(position)
    best: dict[str, float] = {}
    nonfinite = 0
    valid_at = validation_steps(cfg, steps)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    while step < steps:
        t0 = time.perf_counter()
        wait = 0.0
        losses: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            tw = time.perf_counter()
            batch = next_batch()
            wait += time.perf_counter() - tw
            note_losses(position.update(batch))
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
        # the norm before clipping, every step; inf max_norm only measures
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        lrs = {f"lr_{g['name']}": g["lr"] for g in opt.param_groups}
        if math.isfinite(grad_norm):
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        else:  # never apply, never clip to zero: skip the update, count it, say so
            nonfinite += 1
            if scaler is not None:
                scaler.update()  # lowers the fp16 loss scale, as a skipped scaler step does
            log.record({"step": step + 1, "skipped_update": "non-finite gradient norm",
                        "grad_norm": grad_norm, "nonfinite_steps": nonfinite})
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1

        elapsed = time.perf_counter() - t0
        log.scalars(step, {**{f"train/{k}": v for k, v in losses.items()}, "train/grad_norm": grad_norm,
                           **{f"lr/{k.removeprefix('lr_')}": v for k, v in lrs.items()},
                           "train/nonfinite_steps": nonfinite, "train/skipped_samples": position.skipped})
        if step % cfg.log_freq == 0 or step == steps or step == 1:
            log.record({"step": step, **losses, "grad_norm": grad_norm, "nonfinite_steps": nonfinite, **lrs,
                        "step_s": elapsed, "data_wait_share": wait / elapsed,
                        "skipped_samples": position.skipped})
        validate = step in valid_at and cfg.data.valid is not None
        if step == steps or validate or (cfg.save_freq and step % cfg.save_freq == 0):
            save_state(checkpoint_path(cfg.output, step), model, opt, sched, scaler, step, position)
            if cfg.remove_before_ckpt and is_main():
                for old in Path(cfg.output, "ckpt").glob("step_*.pt"):
                    if old != checkpoint_path(cfg.output, step):
                        old.unlink()
        if validate:
            metrics = _evaluate(model, cfg, test_task)
            log.record({"valid_step": step, **metrics})
            log.scalars(step, {f"valid/{k}": v for k, v in metrics.items()})
            if cfg.save_best and is_main():
                keep_best(cfg, model, metrics, best, step,
                          [headline(t, g, cfg.rerank_k) for t in parse_task(test_task) for g in t.groups])
            model.train()
    return metrics


def keep_best(cfg: TrainConfig, model: Any, metrics: dict[str, Any], best: dict[str, float], step: int,
              names: list[str]) -> None:
    """Write ``ckpt/best_<metric>.pt`` when a headline metric reaches a new best (>=, as upstream)."""
    from vast.model import save_checkpoint

    for name in names:
        if name in metrics and metrics[name] >= best.get(name, -math.inf):
            best[name] = metrics[name]
            save_checkpoint(model, Path(cfg.output) / "ckpt" / f"best_{name}.pt",
                            extra={"step": step, name: metrics[name]})
