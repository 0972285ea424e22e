"""The trainer's typed config (presets in ``vast/configs/train/``) and what it asks the reader to decode.

``trainer.py`` runs it and ``evaluate.py`` reads it; both import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vast.shards.reader import DecodeSpec, ReaderConfig
from vast.train.optim import OptimConfig


@dataclass
class ModelConfig:
    """Which VAST to train and how its towers train."""

    name: str = "tiny"
    """Named model config (``vast.model.CONFIGS``): tiny, vast, vision-captioner, audio-captioner."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``create_model`` overrides (top-level fields, towers as mappings)."""
    tokenizer: str | None = None
    """Directory with the BERT ``vocab.txt`` (required: the model tokenizes the captions)."""
    init: str | None = None
    """Initial weights: one of our checkpoints, or an official VAST run / ``model_step_N.pt``
    (upstream ``--pretrain_dir``)."""
    eva_clip: str | None = None
    """Public EVA-CLIP file (``EVA01_CLIP_g_14_psz14_s11B.pt``) for the vision tower: pretraining starts
    from these three public towers, as upstream; unused when ``init`` is set (it holds every tower)."""
    beats: str | None = None
    """Public BEATs file (``BEATs_iter3_plus_AS2M.pt``) for the audio tower."""
    bert: str | None = None
    """Hugging Face ``bert-base-uncased`` directory for the text tower (cross-attention starts fresh)."""
    checkpointing: bool = False
    """Gradient checkpointing of every transformer block (upstream ``--checkpointing``)."""
    frozen_vision: bool = False
    """Freeze the vision tower (upstream ``--frozen_vision``)."""
    frozen_audio: bool = False
    """Freeze the audio tower (upstream ``frozen_audio``)."""


@dataclass
class DataConfig:
    """Training and validation shards and how samples decode."""

    train: ReaderConfig = field(default_factory=ReaderConfig)
    valid: ReaderConfig | None = None
    """Validation shards (read epoch-exact, middle frames); None skips validation."""
    train_vision_sample_num: int = 8
    test_vision_sample_num: int = 16
    train_audio_sample_num: int = 1
    test_audio_sample_num: int = 1
    image_size: int = 224
    """Frame side in pixels (the vision tower's resolution)."""
    vision_transforms: str = "none"
    """Upstream frame transform: ``none`` (squash, no augmentation: every upstream config but MSRVTT's)
    or ``crop_flip`` (train: random square crop + flip; test: short-side resize + center crop)."""
    antialias: bool = False
    """Antialias frame resizing (ours; upstream resizes without)."""
    epoch_samples: int = 0
    """Samples per epoch for ``train_epoch``; 0 counts them from the shards' parquet manifests."""


@dataclass
class WandbConfig:
    """Where a Weights & Biases run goes."""

    project: str = "vast"
    name: str | None = None
    """Run name (default: the output directory's name)."""
    entity: str | None = None
    mode: str = "online"
    """``online``, ``offline`` (files under ``<output>/wandb``) or ``disabled``."""


@dataclass
class TrainConfig:
    """One training or testing run (presets in ``vast/configs/train/``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: str = "out/train"
    """Run directory: ``ckpt/``, ``log.jsonl``, ``config.json``."""
    mode: str = "training"
    """``training`` or ``testing`` (evaluate ``checkpoint`` on the validation data)."""
    checkpoint: str | None = None
    """Weights to evaluate in testing mode: one of our checkpoints or an upstream ``model_step_N.pt``."""
    train_task: str = "ret%tv"
    """Upstream task string, e.g. ``ret%tvas%tvs%tv%ta_cap%tvas%tvs%tv%ta`` for VAST-27M pretraining."""
    test_task: str = ""
    """Task string of validation (default: the training task); every group of every task is scored."""
    train_batch_size: int = 64
    """GLOBAL samples per optimizer step, as upstream: each process takes
    ``train_batch_size / (world size x grad_accum)`` per micro-batch (it must divide)."""
    test_batch_size: int = 64
    """Samples per evaluation batch (evaluation runs on one process)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (gradients summed, synced once; upstream
    ``gradient_accumulation_steps``)."""
    train_steps: int = 0
    """Optimizer steps; 0 derives them from ``train_epoch`` as upstream: int(samples // batch x epochs)."""
    train_epoch: float = 0.0
    valid_freq: int = 0
    """Validations during training, as upstream: at steps where (step + 1) % (steps // valid_freq - 1)
    is 0 (0: none; there is always one at the end)."""
    valid_steps: int = 0
    """Validate every N steps instead (ours; 0: use ``valid_freq``)."""
    first_eval: bool = True
    """Evaluate before the first training step (upstream ``--first_eval``; not on a resumed run)."""
    zero_shot: bool = False
    """Evaluate the initial weights and stop (upstream ``--zero_shot``)."""
    save_freq: int = 0
    """Checkpoint every N steps (0: only at validations and the end)."""
    save_best: bool = False
    """Keep ``ckpt/best_<metric>.pt`` (weights) of the best validation so far (upstream ``--save_best``)."""
    remove_before_ckpt: bool = True
    """Delete older step checkpoints when a new one is written (upstream default)."""
    log_freq: int = 10
    """Console and ``log.jsonl`` every N steps (TensorBoard and W&B get every step)."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 autocast (fp16 uses a gradient scaler)."""
    beam_size: int = 3
    max_generation_len: int = 40
    meteor: bool = True
    """Caption eval: also METEOR (pycocoevalcap's Java scorer, when java and pycocoevalcap are installed)."""
    rerank_k: int = 50
    """Retrieval: matching-head re-ranking of the top k contrastive candidates (``itm_rerank_num``)."""
    ret_bidirection_evaluation: bool = False
    """Retrieval: also score item-to-text (v2t), re-ranking each item's top k texts (upstream, off)."""
    qa_normalize: bool = False
    """QA accuracy on normalised words (ours) instead of the exact decoded string (upstream)."""
    tensorboard: bool = True
    """Write TensorBoard event files into the run directory beside ``log.jsonl``."""
    wandb: WandbConfig | None = None
    """Log to Weights & Biases too (needs ``pip install wandb``); None: off."""
    seed: int = 0
    backend: str = ""
    """torch.distributed backend under torchrun; empty: nccl on GPU, gloo on CPU."""


def decode_spec(cfg: TrainConfig, train: bool, task: str) -> DecodeSpec:
    """What the reader decodes for ``task``: frames only if a group needs vision, audio only if audio."""
    from vast.model.tasks import modalities_needed, parse_task

    mods = modalities_needed(parse_task(task))
    d = cfg.data
    return DecodeSpec(
        num_frames=d.train_vision_sample_num if train else d.test_vision_sample_num,
        num_audio_clips=(d.train_audio_sample_num if train else d.test_audio_sample_num) * ("a" in mods),
        image_size=d.image_size, train=train, video="v" in mods, transforms=d.vision_transforms,
        antialias=d.antialias)
