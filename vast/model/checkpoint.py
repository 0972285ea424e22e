"""Saving and loading VAST weights: our own checkpoints and the official layouts.

Official files handled: VAST runs (``<run>/ckpt/model_step_N.pt``, pretrained model and the two
captioners), ``EVA01_CLIP_g_14_psz14_s11B.pt``, ``BEATs_iter3_plus_AS2M.pt`` and Hugging Face
``bert-base-uncased``. Every load goes through :func:`load_state`, which maps names, resizes
position and frame embeddings, and returns a :class:`LoadReport`; anything missing or unexpected
that is not explained raises :class:`CheckpointMismatch`. Files are read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .audio import AudioConfig, BEATs
from .text import BertForMaskedLM, TextConfig
from .vast import VAST, VASTConfig, resize_frame_embedding
from .vision import EVAVisionTransformer, VisionConfig, interpolate_pos_embed

FORMAT = "vast-pipeline/vast-1"

# Parts of official files VAST never uses: the EVA-CLIP text tower and CLIP projection head.
UNUSED_EVA = (
    "text.",
    "logit_scale",
    "visual.head.",
    "positional_embedding",
    "text_projection",
    "token_embedding.",
    "transformer.",
    "ln_final.",
)
# Top-level VAST names that belong to one tower (ignored when the model is built without it).
TOWER_KEYS = {
    "vision": (
        "vision_encoder.",
        "vision_frame_embedding",
        "vision_type_embeddings",
        "hidden_trans_vision_multimodal.",
        "contra_head_v.",
        "contra_head_vs.",
        "contra_head_va.",
        "contra_head_vas.",
    ),
    "audio": (
        "audio_encoder.",
        "audio_frame_embedding",
        "audio_type_embeddings",
        "hidden_trans_audio_multimodal.",
        "contra_head_a.",
        "contra_head_va.",
        "contra_head_vas.",
    ),
}


class CheckpointMismatch(RuntimeError):
    """A checkpoint that does not fit the model: missing, unexpected or misshapen tensors."""


@dataclass
class LoadReport:
    """What a load did: every checkpoint key is loaded, ignored (with a reason) or unexpected."""

    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    """key -> why it was deliberately left out."""
    fresh: list[str] = field(default_factory=list)
    """Model keys absent from the file by design, left at their initialisation (e.g. cross-attention)."""
    resized: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"loaded {self.loaded} tensors"]
        for name in ("missing", "unexpected", "mismatched", "fresh"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name}: {few(keys)}")
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)}: {few(sorted(set(self.ignored.values())))}")
        for k, (a, b) in self.resized.items():
            lines.append(f"resized {k}: {a} -> {b}")
        return "\n".join(lines)


def read_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` on CPU with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    fresh: Callable[[str], bool] = lambda k: False,
    strict: bool = True,
    report: LoadReport | None = None,
) -> LoadReport:
    """Copy ``state`` into ``module`` by name; ``fresh(key)`` marks model keys allowed to be absent.

    Shapes must match exactly (resize before calling). With ``strict`` a missing, unexpected or
    misshapen tensor raises :class:`CheckpointMismatch` and nothing is loaded.
    """
    report = report or LoadReport()
    own = module.state_dict(keep_vars=True)
    for k in own:
        if k not in state:
            (report.fresh if fresh(k) else report.missing).append(k)
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            report.mismatched.append(f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}")
    if strict and not report.ok:
        raise CheckpointMismatch(f"checkpoint does not fit {type(module).__name__}:\n{report.summary()}")
    usable = {k: v for k, v in state.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    on_meta = any(p.device.type == "meta" for p in own.values())
    # assign=True replaces meta tensors by the file's; otherwise copy into existing storage
    module.load_state_dict(usable, strict=False, assign=on_meta)
    if on_meta:
        _retie(module)
    report.loaded = len(usable)
    return report


def _retie(module: nn.Module) -> None:
    """Re-tie the BERT decoder to the word embeddings after ``assign=True`` replaced both."""
    for m in module.modules():
        if isinstance(m, BertForMaskedLM):
            m.cls.predictions.decoder.weight = m.bert.embeddings.word_embeddings.weight
            m.cls.predictions.decoder.bias = m.cls.predictions.bias


def _unwrap(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Take ``model``, ``module`` or ``state_dict`` (first present) and strip a ``module.`` prefix."""
    for key in ("model", "module", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if any(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------- our format


def save_checkpoint(model: VAST, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Save the config and weights (plus plain-data ``extra``, e.g. the step) in one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "config": dataclasses.asdict(model.cfg),
        "model": model.state_dict(),
        "extra": extra or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def config_from_dict(d: dict[str, Any]) -> VASTConfig:
    """Rebuild a :class:`VASTConfig` from ``dataclasses.asdict`` output."""
    d = dict(d)
    d["vision"] = VisionConfig(**d["vision"]) if d.get("vision") else None
    d["audio"] = AudioConfig(**d["audio"]) if d.get("audio") else None
    d["text"] = TextConfig(**d["text"])
    return VASTConfig(**d)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> VAST:
    """Build the model a :func:`save_checkpoint` file describes and load its weights exactly."""
    blob = read_file(path)
    if blob.get("format") != FORMAT:
        raise CheckpointMismatch(
            f"{path} is not a {FORMAT} checkpoint (use load_official_vast for upstream runs)"
        )
    with torch.device("meta"):
        model = config_from_dict(blob["config"]).build()
    load_state(model, blob["model"])
    return model.to(device)


# ------------------------------------------------------------ official VAST


def latest_step(run_dir: str | Path) -> Path:
    """The highest ``<run>/ckpt/model_step_<N>.pt`` of an upstream run directory."""
    steps = {}
    for p in Path(run_dir, "ckpt").glob("model_step_*.pt"):
        m = re.fullmatch(r"model_step_(\d+)\.pt", p.name)
        if m:
            steps[int(m.group(1))] = p
    if not steps:
        raise FileNotFoundError(f"no ckpt/model_step_N.pt under {run_dir}")
    return steps[max(steps)]


def map_official_vast(
    state: dict[str, torch.Tensor], model: VAST
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename an upstream VAST state dict to our names, resize embeddings, set aside unused parts."""
    report = LoadReport()
    state = _unwrap(state)
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        k = re.sub(r"^(evaclip_model|clip_model)\.", "vision_encoder.", k)
        k = k.replace("video", "vision")
        if k.startswith("vision_encoder."):
            sub = k.removeprefix("vision_encoder.")
            if sub.startswith(UNUSED_EVA):
                report.ignored[k] = "EVA-CLIP text tower / CLIP head (unused by VAST)"
                continue
            k = "vision_encoder." + sub.removeprefix("visual.")
        out[k] = v
    for tower, present in (
        ("vision", model.vision_encoder is not None),
        ("audio", model.audio_encoder is not None),
    ):
        if not present:
            for k in [k for k in out if k.startswith(TOWER_KEYS[tower])]:
                report.ignored[k] = f"{tower} tower not built in this config"
                del out[k]
    own = model.state_dict(keep_vars=True)
    for name in ("vision_frame_embedding", "audio_frame_embedding"):
        if name in out and name in own and out[name].shape[1] != own[name].shape[1]:
            report.resized[name] = [list(out[name].shape), list(own[name].shape)]
            out[name] = resize_frame_embedding(out[name], own[name].shape[1])
    pos = "vision_encoder.pos_embed"
    if pos in out and pos in own and out[pos].shape != own[pos].shape:
        report.resized[pos] = [list(out[pos].shape), list(own[pos].shape)]
        out[pos] = interpolate_pos_embed(out[pos], model.cfg.vision.grid)
    return out, report


def load_official_vast(
    model: VAST, source: str | Path | dict[str, torch.Tensor], strict: bool = True
) -> LoadReport:
    """Load an upstream VAST checkpoint (``model_step_N.pt``, its run directory, or the loaded dict)."""
    if not isinstance(source, dict):
        path = Path(source)
        source = read_file(latest_step(path) if path.is_dir() else path)
    state, report = map_official_vast(source, model)
    return load_state(model, state, strict=strict, report=report)


def load_weights(model: VAST, source: str | Path) -> LoadReport:
    """Load one of our checkpoints (``save_checkpoint``) or an upstream VAST ``model_step_N.pt`` / run
    directory (its latest step) into ``model``."""
    path = Path(source)
    blob = read_file(latest_step(path) if path.is_dir() else path)
    if blob.get("format") == FORMAT:
        return load_state(model, blob["model"])
    return load_official_vast(model, blob)


# --------------------------------------------------------------- the towers


def map_eva_clip(
    state: dict[str, torch.Tensor], vision: EVAVisionTransformer
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Keep the ``visual.*`` tower of an EVA-CLIP state dict (prefix dropped), resizing ``pos_embed``."""
    report = LoadReport()
    out = {}
    for k, v in _unwrap(state).items():
        if not k.startswith("visual.") or k.startswith("visual.head."):
            report.ignored[k] = "EVA-CLIP text tower / CLIP head (unused by VAST)"
            continue
        out[k.removeprefix("visual.")] = v
    if "pos_embed" in out and out["pos_embed"].shape != vision.pos_embed.shape:
        report.resized["pos_embed"] = [list(out["pos_embed"].shape), list(vision.pos_embed.shape)]
        out["pos_embed"] = interpolate_pos_embed(out["pos_embed"], vision.cfg.grid)
    return out, report


def load_eva_clip(vision: EVAVisionTransformer, path: str | Path, strict: bool = True) -> LoadReport:
    """Load the visual tower of an EVA-CLIP file such as ``EVA01_CLIP_g_14_psz14_s11B.pt``."""
    state, report = map_eva_clip(read_file(path), vision)
    return load_state(vision, state, strict=strict, report=report)


def load_beats(audio: BEATs, path: str | Path, strict: bool = True) -> LoadReport:
    """Load ``BEATs_iter3_plus_AS2M.pt`` (``cfg`` + ``model``); the cfg must describe ``audio``'s shape."""
    blob = read_file(path)
    if "cfg" in blob:
        file_cfg = AudioConfig.from_checkpoint_cfg(
            blob["cfg"], mel_bins=audio.cfg.mel_bins, grad_checkpointing=audio.cfg.grad_checkpointing
        )
        if file_cfg != audio.cfg:
            raise CheckpointMismatch(
                f"BEATs cfg in {path} ({file_cfg}) differs from the model's ({audio.cfg})"
            )
    return load_state(audio, blob["model"], strict=strict)


def load_bert(text: BertForMaskedLM, path: str | Path, strict: bool = True) -> LoadReport:
    """Load Hugging Face ``bert-base-uncased`` weights (a directory or a weights file).

    Cross-attention layers start fresh; the pooler and next-sentence head are ignored; the old
    ``gamma``/``beta`` LayerNorm names are accepted.
    """
    path = Path(path)
    if path.is_dir():
        files = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()]
        if not files:
            raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
        path = files[0]
    report = LoadReport()
    state = {}
    for k, v in _unwrap(read_file(path)).items():
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
        if k.startswith(("bert.pooler.", "cls.seq_relationship.")):
            report.ignored[k] = "pooler / next-sentence head (unused by VAST)"
            continue
        state[k] = v
    fresh = lambda k: (
        ".crossattention." in k
        or k
        in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "bert.embeddings.position_ids")
    )
    return load_state(text, state, fresh=fresh, strict=strict, report=report)


def load_public_towers(
    model: VAST,
    eva_clip: str | Path | None = None,
    beats: str | Path | None = None,
    bert: str | Path | None = None,
) -> dict[str, LoadReport]:
    """Start pretraining from the public tower weights, as upstream VAST does; fusion layers stay fresh."""
    reports = {}
    if eva_clip is not None:
        if model.vision_encoder is None:
            raise ValueError("an EVA-CLIP file was given but the model has no vision tower")
        reports["vision_encoder"] = load_eva_clip(model.vision_encoder, eva_clip)
    if beats is not None:
        if model.audio_encoder is None:
            raise ValueError("a BEATs file was given but the model has no audio tower")
        reports["audio_encoder"] = load_beats(model.audio_encoder, beats)
    if bert is not None:
        reports["multimodal_encoder"] = load_bert(model.multimodal_encoder, bert)
    return reports
