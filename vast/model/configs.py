"""Named model configs behind one factory: ``create_model(name, **overrides)``.

``tiny``: a few million parameters, every part of the real architecture, for tests and CPU demos.
It trains from random weights, so two choices differ from the real towers: stochastic depth and
layerdrop are off (tiny runs stay deterministic), and its BEATs patch embedding has a bias. Without
one, an untrained BEATs (every bias zero) maps an all-zero fbank patch (the zero padding past a
clip's end, a clip without audio) to exactly zero activations, every LayerNorm then runs at zero
variance where its slope is 1/sqrt(eps), and the gradient norm reaches 1e15 or inf: clipping at 5
then scales every gradient to nothing. Pretrained BEATs weights have non-zero biases, so the real
configs (``conv_bias`` False, as the checkpoint) never sit at that point.
``vast``: EVA01-CLIP-g/14 + BEATs iter3+ + BERT-base (the pretrained model; 1 frame / 2 clips of
frame embedding, as the pretrain checkpoint stores them). ``vision-captioner``: EVA-g + BERT,
8 frames. ``audio-captioner``: BEATs + BERT, 3 audio clips.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .audio import AudioConfig
from .text import TextConfig, load_tokenizer
from .vast import VAST, VASTConfig
from .vision import VisionConfig


def tiny() -> VASTConfig:
    return VASTConfig(
        vision=VisionConfig(image_size=32, patch_size=8, width=128, depth=2, heads=4, mlp_dim=512,
                            drop_path_rate=0.0),
        audio=AudioConfig(
            conv_bias=True,
            encoder_layerdrop=0.0,
            embed_dim=64,
            encoder_layers=2,
            encoder_embed_dim=128,
            encoder_ffn_embed_dim=512,
            encoder_attention_heads=4,
            conv_pos=16,
            conv_pos_groups=4,
            num_buckets=32,
            max_distance=64,
        ),
        text=TextConfig(
            vocab_size=1000,
            hidden_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=512,
            max_position_embeddings=128,
            dropout=0.0,
            pad_token_id=0,
            unk_token_id=1,
            cls_token_id=2,
            sep_token_id=3,
            mask_token_id=4,
            random_token_start=5,
        ),
        contra_dim=64,
        vision_frames=2,
        audio_clips=1,
        max_caption_len=24,
        max_omni_caption_len=32,
        max_subtitle_len=24,
        max_question_len=16,
        max_answer_len=6,
    )


def vast() -> VASTConfig:
    return VASTConfig(
        vision=VisionConfig(), audio=AudioConfig(), text=TextConfig(), vision_frames=1, audio_clips=2
    )


def vision_captioner() -> VASTConfig:
    return VASTConfig(vision=VisionConfig(), audio=None, text=TextConfig(), vision_frames=8, audio_clips=1)


def audio_captioner() -> VASTConfig:
    return VASTConfig(vision=None, audio=AudioConfig(), text=TextConfig(), vision_frames=1, audio_clips=3)


CONFIGS: dict[str, Callable[[], VASTConfig]] = {
    "tiny": tiny,
    "vast": vast,
    "vision-captioner": vision_captioner,
    "audio-captioner": audio_captioner,
}


def get_config(name: str, **overrides: Any) -> VASTConfig:
    """A named config with overrides: top-level fields directly, towers as dicts (``text={...}``)."""
    if name not in CONFIGS:
        raise KeyError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}")
    cfg = CONFIGS[name]()
    for key in ("vision", "audio", "text"):
        if isinstance(overrides.get(key), dict):
            sub = getattr(cfg, key)
            if sub is None:
                raise ValueError(f"config {name!r} has no {key} tower to override")
            overrides[key] = dataclasses.replace(sub, **overrides[key])
    return dataclasses.replace(cfg, **overrides)


def create_model(
    name: str,
    *,
    device: str | torch.device | None = None,
    checkpoint: str | Path | None = None,
    tokenizer: str | Path | None = None,
    **overrides: Any,
) -> VAST:
    """Build a named model; optionally load weights and attach a tokenizer.

    ``device="meta"`` builds without allocating (parameter counts, layout checks).
    ``checkpoint``: one of our checkpoints, or an official VAST ``model_step_N.pt`` / run directory.
    ``tokenizer``: a local directory with ``vocab.txt``.
    """
    from .checkpoint import load_weights

    cfg = get_config(name, **overrides)
    with torch.device(device or "cpu"):
        model = cfg.build()
    if checkpoint is not None:
        load_weights(model, checkpoint)
    if tokenizer is not None:
        model.set_tokenizer(load_tokenizer(tokenizer))
    return model
