"""Typed entry points of the trainer (the lead wires them into ``vast-pipeline``); ``python -m vast.train``.

``python -m vast.train --config retrieval --train_batch_size 32 --data.train.num_workers 4`` (add
``--ray --ray.num_workers 4`` for Ray Train):
``--config`` names a preset in ``vast/configs/train/``, a YAML file, or an upstream VAST JSON config
(``config/vast/finetune_cfg/retrieval-msrvtt.json``: see ``vast.train.upstream``); every other flag
is either an upstream VAST flag (``UPSTREAM_FLAGS``, meaning what it means upstream:
``--train_batch_size`` is the global batch, ``--valid_freq`` the number of validations) or a
dotted path into :class:`TrainConfig`.
Under ``torchrun --nproc_per_node N -m vast.train ...`` each process joins the process group.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from vast.config import apply_override, from_dict, load_yaml
from vast.train.config import TrainConfig
from vast.train.trainer import train as run_training

# Upstream command-line names -> where they live in TrainConfig.
UPSTREAM_FLAGS = {
    "train_vision_sample_num": "data.train_vision_sample_num",
    "test_vision_sample_num": "data.test_vision_sample_num",
    "train_audio_sample_num": "data.train_audio_sample_num",
    "test_audio_sample_num": "data.test_audio_sample_num",
    "train_task": "train_task",
    "test_task": "test_task",
    "learning_rate": "optim.learning_rate",
    "train_batch_size": "train_batch_size",
    "test_batch_size": "test_batch_size",
    "train_epoch": "train_epoch",
    "train_steps": "train_steps",
    "num_train_steps": "train_steps",
    "checkpointing": "model.checkpointing",
    "frozen_vision": "model.frozen_vision",
    "valid_freq": "valid_freq",
    "beam_size": "beam_size",
    "mode": "mode",
    "checkpoint": "checkpoint",
    "pretrain_dir": "model.init",
    "output_dir": "output",
    "first_eval": "first_eval",
    "save_best": "save_best",
    "zero_shot": "zero_shot",
    "vision_transforms": "data.vision_transforms",
    "itm_rerank_num": "rerank_k",
    "ret_bidirection_evaluation": "ret_bidirection_evaluation",
    "itm_ratio": "model.overrides.itm_weight",
    "gradient_accumulation_steps": "grad_accum",
    "clip_lr": "optim.vision_learning_rate",
    "weight_decay": "optim.weight_decay",
    "warmup_ratio": "optim.warmup_ratio",
    "scheduler": "optim.scheduler",
    "seed": "seed",
    "log_steps": "log_freq",
    "max_generation_len": "max_generation_len",
}
# Upstream's two precision switches set our one ``precision``.
PRECISION_FLAGS = ("fp16", "bf16")


def load_train_config(config: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A preset (``retrieval`` or ``train/retrieval``), YAML file or upstream JSON config, with overrides.

    Override keys are upstream flag names (``train_batch_size``) or dotted paths (``optim.warmup_ratio``).
    """
    if config.endswith(".json"):
        from vast.train.upstream import from_upstream_json

        data, notes = from_upstream_json(config)
        for note in notes:
            print(f"upstream config: {note}", file=sys.stderr)
    else:
        yaml_file = config.endswith((".yaml", ".yml")) or config.startswith("train/")
        data = load_yaml(config if yaml_file else f"train/{config}")
    for key, value in (overrides or {}).items():
        if key in PRECISION_FLAGS:
            on = str(value).lower() in ("true", "1", "yes")
            if on:
                data["precision"] = key
            elif data.get("precision") == key:
                data["precision"] = "fp32"
            continue
        apply_override(data, UPSTREAM_FLAGS.get(key, key), value)
    return from_dict(TrainConfig, data)


def train(config: str, overrides: dict[str, str] | None = None, ray: bool = False,
          ray_options: dict[str, str] | None = None) -> int:
    """Train or test VAST as ``config`` (+ ``overrides``) says; returns a process exit code (0 = done).

    ``ray``: run under Ray Train (``RayTrainConfig`` fields in ``ray_options``: ``num_workers``,
    ``use_gpu``, ``cpus_per_worker``, ``address``, ``storage_path``) instead of in this process or
    the ``torchrun`` group.
    """
    cfg = load_train_config(config, overrides)
    if not ray:
        run_training(cfg)
        return 0
    from vast.train.ray_launch import RayTrainConfig, train_with_ray

    data: dict[str, Any] = {}
    for key, value in (ray_options or {}).items():
        apply_override(data, key, value)
    train_with_ray(cfg, from_dict(RayTrainConfig, data))
    return 0


def shards_build(annotations: str, media: str, output: str, preset: str = "demo",
                 overrides: dict[str, str] | None = None) -> int:
    """Pack a downstream set (upstream annotation JSON + media folder) into shards; 0 when all packed."""
    from vast.pipeline.build import shards_build as build

    return build(annotations, media, output, preset, overrides)


def parse_args(argv: list[str]) -> tuple[str, dict[str, str]]:
    """``--config NAME`` plus ``--key value`` / ``--key=value`` pairs (a bare ``--flag`` means true)."""
    config, overrides = "tiny-retrieval", {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise SystemExit(f"unexpected argument {arg!r}; flags are --key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            else:
                value = "true"
        if key == "config":
            config = value
        else:
            overrides[key] = value
        i += 1
    return config, overrides


def usage() -> str:
    """``--help`` text: the upstream flags and every dotted config key with its documentation."""
    from vast.config import describe

    lines = ["python -m vast.train --config PRESET|FILE.yaml|UPSTREAM.json [--key value ...] "
             "[--ray [--ray.num_workers N]]", "", "upstream flags:"]
    lines += [f"  --{flag:<26} -> {path}" for flag, path in UPSTREAM_FLAGS.items()]
    lines += [f"  --{flag:<26} -> precision" for flag in PRECISION_FLAGS]
    lines += ["", "config keys:"]
    lines += [f"  --{name:<34} {tp:<18} {doc.splitlines()[0] if doc else ''}"
              for name, tp, doc in describe(TrainConfig)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m vast.train`` (``--ray`` with ``--ray.num_workers N`` ... runs under Ray Train)."""
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return 0
    config, overrides = parse_args(argv)
    ray = str(overrides.pop("ray", "false")).lower() in ("true", "1", "yes")
    ray_options = {k.removeprefix("ray."): overrides.pop(k) for k in list(overrides) if k.startswith("ray.")}
    return train(config, overrides, ray=ray, ray_options=ray_options)


def exit_if_torchrun_worker(code: int) -> int:
    """End a finished torchrun worker process now, skipping interpreter finalization; else ``code``.

    A gloo worker thread can still be releasing the last collective's work object when Python
    finalizes; when it then asks for the GIL the process aborts ("terminate called without an
    active exception", pytorch/pytorch#190489) and torchrun reports the finished run as failed
    (seen in 3 of 40 two-rank runs of a DDP script, also with ``destroy_process_group``). Everything
    the run wrote is closed by the time ``train`` returns; what is buffered is flushed here.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return code
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
