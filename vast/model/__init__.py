"""The VAST model (vision, audio, subtitle, text) in PyTorch.

Public API:
- ``create_model(name, device=None, checkpoint=None, tokenizer=None, **overrides) -> VAST`` with
  ``name`` in ``tiny``, ``vast``, ``vision-captioner``, ``audio-captioner``; ``get_config`` gives the
  :class:`VASTConfig` alone.
- ``VAST.forward(batch, task)`` -> dict of losses (``loss`` is the weighted total) for task strings
  such as ``ret%tvas%tv_cap%tvas`` (see ``tasks``); ``VAST.retrieval_scores``, ``VAST.caption`` /
  ``generate_captions`` (beam, greedy, or top-k sampling with n captions per item: ``CAPTIONER_SAMPLING``),
  ``VAST.answer``.
- ``preprocess``: ``frame_indices``, ``preprocess_frames`` (CLIP normalisation, train augmentation),
  ``audio_slices`` (BEATs fbank slices and groups), ``media_batch`` (decoded clips -> model inputs).
- ``checkpoint``: ``save_checkpoint`` / ``load_checkpoint`` (ours), ``load_official_vast`` (upstream
  ``model_step_N.pt``: pretrained model and released captioners), ``load_public_towers`` (EVA-CLIP,
  BEATs, bert-base-uncased files to start pretraining); each load returns a ``LoadReport`` and
  raises ``CheckpointMismatch`` rather than loading silently.

Captioner mode, as VAST labelled VAST-27M::

    model = create_model("vision-captioner", checkpoint=run_dir, tokenizer=bert_dir).eval()
    batch = media_batch(videos=[frames], num_frames=8)  # frames: (N, H, W, 3) uint8
    captions = model.caption(batch, "tv", CAPTIONER_SAMPLING)  # 3 sampled captions per clip
"""

from .checkpoint import (
    CheckpointMismatch,
    LoadReport,
    load_beats,
    load_bert,
    load_checkpoint,
    load_eva_clip,
    load_official_vast,
    load_public_towers,
    load_weights,
    save_checkpoint,
)
from .configs import CONFIGS, create_model, get_config
from .generation import CAPTIONER_SAMPLING, GenerationConfig
from .preprocess import audio_slices, frame_indices, media_batch, preprocess_frames
from .tasks import Task, parse_task
from .text import load_tokenizer
from .vast import VAST, VASTConfig

__all__ = [
    "CAPTIONER_SAMPLING",
    "CONFIGS",
    "CheckpointMismatch",
    "GenerationConfig",
    "LoadReport",
    "Task",
    "VAST",
    "VASTConfig",
    "audio_slices",
    "create_model",
    "frame_indices",
    "get_config",
    "load_beats",
    "load_bert",
    "load_checkpoint",
    "load_eva_clip",
    "load_official_vast",
    "load_public_towers",
    "load_tokenizer",
    "load_weights",
    "media_batch",
    "parse_task",
    "preprocess_frames",
    "save_checkpoint",
]
