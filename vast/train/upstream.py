"""Upstream VAST launch compatibility: its JSON configs and command-line flags mapped to :class:`TrainConfig`.

An upstream config (``config/vast/finetune_cfg/retrieval-msrvtt.json``) has ``run_cfg`` and
``model_cfg`` (each a ``default`` file plus overrides) and ``data_cfg`` (``train`` / ``val`` lists
of datasets). ``from_upstream_json`` merges them as upstream ``utils/args.py`` does (the
``default`` file when it can be found from the working directory or the config's repository,
else the values of upstream's own defaults at 410ca47) and maps every key it knows:

- keys with a home here map to it (``learning_rate`` -> ``optim.learning_rate``, ``itm_rerank_num``
  -> ``rerank_k``, a dataset's ``vision_sample_num`` -> ``data.train_vision_sample_num`` ...);
- keys that change nothing here are accepted and named in the returned notes (``pin_mem``,
  ``use_ddp``; ``grad_norm``, which upstream's trainer never reads: its clip call is commented out);
- keys whose value we cannot honour (another vision encoder, ``captioner_mode``, mixed tasks
  across training datasets) and keys we do not know are refused with a :class:`ConfigError`
  naming each.

Upstream datasets name an annotation file and media folders; the trainer reads shards, so a
dataset entry gives its shards in ``shards`` (our key) or the run sets ``data.train.corpora`` /
``data.valid.corpora``; ``vast-pipeline shards-build TXT MEDIA OUT`` packs the upstream files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vast.config import ConfigError, apply_override

# The values of upstream's config/vast/default_run_cfg.json and default_model_cfg.json at 410ca47,
# used when the "default" file a config names cannot be found.
RUN_DEFAULTS: dict[str, Any] = {
    "checkpoint": "", "output_dir": "none", "gradient_accumulation_steps": 1, "clip_lr": 5e-7,
    "optim": "adamw", "learning_rate": 1e-4, "betas": [0.9, 0.98], "weight_decay": 0.01, "grad_norm": 2.0,
    "warmup_ratio": 0.1, "resume": False, "seed": 50, "fp16": True, "bf16": False, "zero_shot": False,
    "scheduler": "warmup_linear", "new_lr": 0, "new_params_name": [], "valid_freq": 10,
    "dataset_mix_type": "random", "remove_before_ckpt": True, "first_eval": True, "pretrain_dir": "",
    "num_train_steps": 0, "save_best": False, "pin_mem": True, "vision_resolution": 224, "use_ddp": True,
    "mode": "training", "log_steps": 100,
}
MODEL_DEFAULTS: dict[str, Any] = {
    "model_type": "vast", "itm_ratio": 0.1, "frozen_vision": False, "frozen_audio": False,
    "checkpointing": False, "max_caption_len": 40, "max_omni_caption_len": 70, "max_subtitle_len": 70,
    "contra_dim": 512, "inherit_keys": ["vision_encoder_type", "audio_encoder_type", "audio_melbins",
                                        "audio_target_length"],
    "frame_embedding_type": "adaptive", "vision_resolution": 224, "vision_encoder_type": "evaclip01_giant",
    "audio_encoder_type": "beats", "audio_melbins": 64, "audio_target_length": 1024, "beam_size": 3,
    "captioner_mode": False, "generate_nums": 1, "ret_bidirection_evaluation": False, "itm_rerank_num": 50,
    "evaluation_type": "evaluation_mm",
}
# Where upstream keeps the public weights (./pretrained_weights/...), for runs that start from them.
PRETRAINED = {
    "model.tokenizer": "pretrained_weights/bert/bert-base-uncased",
    "model.bert": "pretrained_weights/bert/bert-base-uncased",
    "model.eva_clip": "pretrained_weights/clip/EVA01_CLIP_g_14_psz14_s11B.pt",
    "model.beats": "pretrained_weights/beats/BEATs_iter3_plus_AS2M.pt",
}

# upstream key -> our dotted key (same value)
RUN_MAP = {
    "output_dir": "output", "gradient_accumulation_steps": "grad_accum",
    "clip_lr": "optim.vision_learning_rate",
    "learning_rate": "optim.learning_rate", "betas": "optim.betas", "weight_decay": "optim.weight_decay",
    "warmup_ratio": "optim.warmup_ratio", "seed": "seed", "zero_shot": "zero_shot",
    "scheduler": "optim.scheduler", "valid_freq": "valid_freq", "remove_before_ckpt": "remove_before_ckpt",
    "first_eval": "first_eval", "num_train_steps": "train_steps", "save_best": "save_best", "mode": "mode",
    "log_steps": "log_freq", "max_generation_len": "max_generation_len", "beam_size": "beam_size",
}
MODEL_MAP = {
    "itm_ratio": "model.overrides.itm_weight", "frozen_vision": "model.frozen_vision",
    "frozen_audio": "model.frozen_audio", "checkpointing": "model.checkpointing",
    "max_caption_len": "model.overrides.max_caption_len",
    "max_omni_caption_len": "model.overrides.max_omni_caption_len",
    "max_subtitle_len": "model.overrides.max_subtitle_len", "contra_dim": "model.overrides.contra_dim",
    "beam_size": "beam_size", "ret_bidirection_evaluation": "ret_bidirection_evaluation",
    "itm_rerank_num": "rerank_k",
}
# keys accepted that change nothing here, with why
IGNORED = {
    "grad_norm": "upstream's trainer never clips (the clip call in utils/pipeline.py is commented out); "
                 "optim.grad_clip applies",
    "resume": "a run always resumes from its output directory's latest checkpoint",
    "pin_mem": "the shard reader manages its own buffers",
    "use_ddp": "DDP is used whenever there is more than one process",
    "dataset_mix_type": "corpora are mixed by weight, one draw per sample",
    "inherit_keys": "the model shape comes from the named config and the checkpoint",
    "generate_nums": "caption sampling belongs to the captioner stages",
    "default": "merged first",
}
# keys whose value must be the one we implement
REQUIRED = {
    "optim": "adamw", "new_lr": 0, "new_params_name": [], "model_type": "vast",
    "frame_embedding_type": "adaptive",
    "vision_encoder_type": "evaclip01_giant", "audio_encoder_type": "beats", "audio_melbins": 64,
    "audio_target_length": 1024, "captioner_mode": False, "evaluation_type": "evaluation_mm",
}
DATASET_KEYS = {"type", "training", "name", "txt", "vision", "audio", "vision_format", "datatype",
                "vision_sample_num", "audio_sample_num", "task", "epoch", "steps", "n_workers", "batch_size",
                "vision_transforms", "annfile", "shards", "make_submission", "multi_evaluation"}


def _read_default(ref: str | None, config: Path) -> dict[str, Any] | None:
    """The ``default`` file a section names, looked up from the working directory, then from the
    config file's folders upwards (upstream paths are relative to its repository root)."""
    if not ref:
        return None
    for root in (Path.cwd(), *config.resolve().parents):
        path = root / ref
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _section(file_cfg: dict[str, Any], name: str, defaults: dict[str, Any], config: Path) -> dict[str, Any]:
    section = dict(file_cfg.get(name) or {})
    merged = dict(_read_default(section.get("default"), config) or defaults)
    merged.update(section)
    return merged


def from_upstream_json(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """TrainConfig data (for ``from_dict``) from an upstream JSON config, and notes on ignored keys."""
    config = Path(path)
    try:
        file_cfg = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config}: not a readable upstream JSON config: {e}") from None
    extra = set(file_cfg) - {"run_cfg", "model_cfg", "data_cfg"}
    if extra:
        raise ConfigError(f"{config}: unknown top-level key(s) {sorted(extra)}; an upstream config has "
                          f"run_cfg, model_cfg and data_cfg")
    run = _section(file_cfg, "run_cfg", RUN_DEFAULTS, config)
    model = _section(file_cfg, "model_cfg", MODEL_DEFAULTS, config)
    data: dict[str, Any] = {"model": {"name": "vast", "overrides": {}}}
    notes: list[str] = []
    errors: list[str] = []

    for where, section, mapping in (("run_cfg", run, RUN_MAP), ("model_cfg", model, MODEL_MAP)):
        for key, value in section.items():
            if key in mapping:
                apply_override(data, mapping[key], value)
            elif key in IGNORED:
                if key != "default":
                    notes.append(f"{where}.{key} = {value!r} ignored: {IGNORED[key]}")
            elif key in REQUIRED:
                if value != REQUIRED[key]:
                    errors.append(f"{where}.{key} = {value!r}: only {REQUIRED[key]!r} is supported")
            elif key in ("fp16", "bf16", "checkpoint", "pretrain_dir", "vision_resolution"):
                pass  # handled below
            else:
                errors.append(f"{where}.{key}: unknown key")
    data["precision"] = "bf16" if run.get("bf16") else "fp16" if run.get("fp16") else "fp32"
    resolution = model.get("vision_resolution", run.get("vision_resolution", 224))
    if resolution != 224:
        apply_override(data, "data.image_size", resolution)
        data["model"]["overrides"]["vision"] = {"image_size": resolution}
    init = run.get("pretrain_dir") or (run.get("checkpoint") if run.get("mode") != "testing" else "")
    if run.get("mode") == "testing" and run.get("checkpoint"):
        data["checkpoint"] = run["checkpoint"]
    if init:
        data["model"]["init"] = init
    for key, value in PRETRAINED.items():
        if key == "model.tokenizer" or not init:  # the public towers start a run without a VAST checkpoint
            apply_override(data, key, value)
    if run.get("output_dir") == "none":  # upstream's placeholder: the command line names the output
        data.pop("output", None)

    _map_datasets(file_cfg.get("data_cfg") or {}, data, errors)
    if errors:
        raise ConfigError(f"{config}: cannot run this upstream config:\n  " + "\n  ".join(errors))
    return data, notes


def _corpus(d: dict[str, Any]) -> dict[str, Any]:
    sources = " + ".join(str(d[k]) for k in ("txt", "vision", "audio") if d.get(k))
    shards = d.get("shards") or []
    return {"urls": [shards] if isinstance(shards, str) else list(shards),
            "name": f"{d.get('name', '')} ({sources})" if sources else d.get("name", "")}


def _check_dataset(d: dict[str, Any], where: str, errors: list[str]) -> None:
    unknown = set(d) - DATASET_KEYS
    if unknown:
        errors.append(f"{where}: unknown key(s) {sorted(unknown)}")
    if d.get("type", "annoindexed") != "annoindexed":
        errors.append(f"{where}.type = {d['type']!r}: only 'annoindexed' is supported")
    if d.get("vision_format") == "video_feats":
        errors.append(f"{where}.vision_format = 'video_feats': precomputed features are not supported")
    for flag in ("make_submission", "multi_evaluation"):
        if d.get(flag):
            errors.append(f"{where}.{flag} = true is not supported")


def _map_datasets(data_cfg: dict[str, Any], data: dict[str, Any], errors: list[str]) -> None:
    extra = set(data_cfg) - {"train", "val"}
    if extra:
        errors.append(f"data_cfg: unknown key(s) {sorted(extra)}")
    train, val = list(data_cfg.get("train") or []), list(data_cfg.get("val") or [])
    for i, d in enumerate(train):
        _check_dataset(d, f"data_cfg.train[{i}]", errors)
    for i, d in enumerate(val):
        _check_dataset(d, f"data_cfg.val[{i}]", errors)
    if train:
        tasks = {d.get("task") for d in train}
        if len(tasks) > 1:
            errors.append(f"data_cfg.train mixes tasks {sorted(map(str, tasks))}: this trainer runs one task "
                          f"string over mixed corpora (run one config per task)")
        first = train[0]
        apply_override(data, "train_task", first.get("task", ""))
        apply_override(data, "data.train_vision_sample_num", first.get("vision_sample_num", 1))
        apply_override(data, "data.train_audio_sample_num", first.get("audio_sample_num", 1))
        if len({d.get("batch_size") for d in train}) > 1:
            errors.append("data_cfg.train: datasets with different batch_size")
        apply_override(data, "train_batch_size", first.get("batch_size", 64))
        if "vision_transforms" in first:
            apply_override(data, "data.vision_transforms", first["vision_transforms"])
        if "n_workers" in first:
            apply_override(data, "data.train.num_workers", first["n_workers"])
        corpora = [_corpus(d) for d in train]
        if len(train) > 1 or "steps" in first:  # upstream samples datasets in proportion to their steps
            for c, d in zip(corpora, train, strict=True):
                c["weight"] = float(d.get("steps", 1))
            if all("steps" in d for d in train) and not data.get("train_steps"):
                data["train_steps"] = sum(int(d["steps"]) for d in train)
        elif "epoch" in first:
            apply_override(data, "train_epoch", first["epoch"])
        data.setdefault("data", {})["train"] = {"corpora": corpora, "resampled": False}
    if len(val) > 1:
        errors.append(f"data_cfg.val has {len(val)} datasets: validate one per run")
    if val:
        v = val[0]
        apply_override(data, "test_task", v.get("task", ""))
        apply_override(data, "data.test_vision_sample_num", v.get("vision_sample_num", 1))
        apply_override(data, "data.test_audio_sample_num", v.get("audio_sample_num", 1))
        apply_override(data, "test_batch_size", v.get("batch_size", 64))
        train_transforms = data.get("data", {}).get("vision_transforms", "none")
        if train and v.get("vision_transforms", "none") != train_transforms:
            errors.append("data_cfg: train and val use different vision_transforms")
        valid = {"corpora": [_corpus(v)], "resampled": False}
        if "n_workers" in v:
            valid["num_workers"] = v["n_workers"]
        data.setdefault("data", {})["valid"] = valid
    else:
        data.setdefault("data", {})["valid"] = None
