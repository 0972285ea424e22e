"""The vision captioner stage: VAST's vision captioner (EVA-CLIP ViT + BERT, task ``cap%tv``).

Each ok row's sampled ``frames`` (uint8 (N, S, S, 3) from the media stage) go through the model's
own test-time transforms (the middle frame of each of ``num_frames`` segments, resized, CLIP
normalised) and the whole batch is captioned at once: ``num_captions`` captions per clip by
top-k sampling (VAST labelled VAST-27M with k = 10 and 3 captions), written to ``vision_cap``.

This module also holds :class:`VASTCaptioner`, what the vision and the audio captioner share:
loading a VAST checkpoint (ours, or an upstream run directory / ``model_step_N.pt``) once per
actor, batched decoding under autocast, and sampling that is a function of the clip alone.
Sampling draws its random numbers per clip, from a generator seeded by ``config.seed`` and the
clip key, and decodes the whole batch with them, so a clip gets the same captions whichever
batch it lands in, and a rerun gives the same captions.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vast.captioners.base import EMPTY_REASON, ModelStage, ModelStageConfig, pick_device, weights_checksum
from vast.pipeline.stage import SampleError

if TYPE_CHECKING:
    import torch

    from vast.model import VAST, GenerationConfig


@dataclass
class CaptionerConfig(ModelStageConfig):
    """Settings shared by the VAST captioners (vision and audio)."""

    checkpoint: str = ""
    """Required. Weights: a checkpoint of ours (``save_checkpoint``; it carries its config), or an
    upstream VAST run directory (its latest ``ckpt/model_step_N.pt``) or ``model_step_N.pt`` file."""
    model: str = ""
    """Named model config (``vast.model.CONFIGS``) an upstream checkpoint is loaded into; our own
    checkpoints carry their config and ignore it."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Overrides of the named config for an upstream checkpoint, as ``create_model(model, **overrides)``
    takes them, e.g. ``{"vision": {"image_size": 336}}``."""
    tokenizer: str = ""
    """Required. BERT WordPiece tokenizer: a hub id (``google-bert/bert-base-uncased`` for the released
    captioners, fetched by ``vast-pipeline models pull``) or a directory with ``vocab.txt``."""
    top_k: int = 10
    """Sample each token among the k most likely (VAST: 10)."""
    num_captions: int = 3
    """Captions sampled per clip (VAST: 3)."""
    max_len: int = 40
    """Most tokens generated per caption, the final [SEP] included."""


@dataclass
class VisionCaptionerConfig(CaptionerConfig):
    """The vision captioner: EVA-CLIP + BERT, captions from the clip's frames."""

    model: str = "vision-captioner"
    """Named model config an upstream checkpoint is loaded into (the released vision captioner's)."""
    num_frames: int = 8
    """Frames per clip the model sees: the middle frame of each of this many equal segments."""


def load_captioner_model(
    checkpoint: str | Path, model: str, tokenizer: str | Path, overrides: dict[str, Any] | None = None
) -> tuple[VAST, Path]:
    """A VAST model in eval mode on CPU with its tokenizer, and the weights file it was loaded from.

    Our checkpoints rebuild the config they store; anything else is read as an upstream VAST file
    and loaded into the named config ``model`` (with ``overrides``). Both build on the meta device
    first, so a large model is not randomly initialised only to be overwritten.
    """
    import torch

    from vast.model import create_model, load_official_vast, load_tokenizer
    from vast.model.checkpoint import FORMAT, config_from_dict, latest_step, load_state, read_file

    path = Path(checkpoint)
    file = latest_step(path) if path.is_dir() else path
    blob = read_file(file)
    if blob.get("format") == FORMAT:
        with torch.device("meta"):
            net = config_from_dict(blob["config"]).build()
        load_state(net, blob["model"])
    else:
        net = create_model(model, device="meta", **dict(overrides or {}))
        load_official_vast(net, blob)
    net.set_tokenizer(load_tokenizer(tokenizer))
    return net.eval(), file


def key_uniforms(keys: list[str], seed: int, copies: int, steps: int) -> torch.Tensor:
    """Uniform draws (B * copies, steps) in [0, 1): rows ``b * copies ... + copies - 1`` depend only
    on ``seed`` and ``keys[b]``, so they do not change with the batch a clip is in."""
    import torch

    draws = []
    for key in keys:
        digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        draws.append(torch.rand(copies, steps, generator=g))
    return torch.cat(draws)


def sample_caption_ids(
    model: VAST, inputs: dict[str, Any], group: str, gen: GenerationConfig, uniforms: torch.Tensor
) -> list[list[list[int]]]:
    """Top-k sampled caption ids per item (``gen.num_return`` each) for modality ``group``.

    The decoding of ``vast.model.generation.generate`` with one change: token t of row r is
    picked by inverse-CDF with ``uniforms[r, t]`` (see :func:`key_uniforms`) instead of one shared
    generator, whose draws would depend on the row's position in the batch.
    """
    import torch
    import torch.nn.functional as F

    from vast.model.generation import MaskDecoder
    from vast.model.tasks import condition_of

    cond = condition_of(group)
    mem, mem_valid = model.memory(model.encode(inputs, set(cond)), cond)  # (B, M, C), (B, M)
    B, n = mem.shape[0], gen.num_return
    text = model.multimodal_encoder
    sep, pad = text.cfg.sep_token_id, text.cfg.pad_token_id
    prefix = torch.full((B, 1), text.cfg.cls_token_id, dtype=torch.long, device=mem.device)
    dec = MaskDecoder(text, mem, mem_valid, prefix, torch.ones_like(prefix, dtype=torch.bool), n)
    uniforms = uniforms.to(mem.device)
    logits = dec.start()  # (B*n, V)
    k = min(gen.top_k, logits.shape[-1])
    done = torch.zeros(B * n, dtype=torch.bool, device=mem.device)
    out = []
    for step in range(gen.max_len):
        top, idx = (logits.float() / gen.temperature).topk(k, dim=-1)  # (B*n, k), most likely first
        cdf = F.softmax(top, dim=-1).cumsum(-1)
        pick = torch.searchsorted(cdf, uniforms[:, step : step + 1] * cdf[:, -1:]).clamp_(max=k - 1)
        tok = idx.gather(1, pick).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        out.append(tok)
        done = done | (tok == sep)
        if bool(done.all()) or step == gen.max_len - 1:
            break
        logits = dec.step(tok)
    seqs = []
    for row in torch.stack(out, dim=1).tolist():  # (B*n, steps)
        end = next((i for i, t in enumerate(row) if t in (sep, pad)), len(row))
        seqs.append(row[:end])
    return [seqs[b * n : (b + 1) * n] for b in range(B)]


class VASTCaptioner(ModelStage):
    """A VAST model in captioner mode: ``prepare`` each row's input, caption the batch at once.

    Subclasses set ``group`` (``tv``, ``ta``), ``input_key`` (the model batch key), ``fields``
    (one field: the captions) and implement ``prepare`` and ``decoding``.
    """

    group: ClassVar[str]
    input_key: ClassVar[str]
    model_options: ClassVar[tuple[str, ...]] = ("tokenizer",)
    no_input_reason: ClassVar[str] = "nothing to caption"
    """The ``empty_reason`` of a row whose ``prepare`` found nothing to caption."""

    @classmethod
    def preflight(cls, config: CaptionerConfig) -> None:
        """The checkpoint must be a local file (no hub hosts VAST's captioners), the tokenizer resolvable."""
        from vast.captioners.hub import ModelMissing, captioner_source

        where = f"stages.{cls.name}.options.checkpoint"
        if not config.checkpoint or not config.tokenizer:
            raise ModelMissing(f"{cls.name}: set options.checkpoint and options.tokenizer")
        if not Path(config.checkpoint).exists():
            raise ModelMissing(f"{where}: {config.checkpoint} does not exist. {captioner_source(cls.name)}")
        super().preflight(config)

    def __init__(self, config: CaptionerConfig | None = None):
        super().__init__(config)
        c: CaptionerConfig = self.config
        if not c.checkpoint or not c.tokenizer:
            raise ValueError(f"{self.name}: set options.checkpoint and options.tokenizer")
        if min(c.top_k, c.num_captions, c.max_len) < 1:
            raise ValueError(f"{self.name}: top_k, num_captions and max_len must be ≥ 1")
        from vast.captioners.hub import resolve_model
        from vast.model import GenerationConfig
        from vast.model.tasks import condition_of

        self.device, self.dtype = pick_device(c)
        model, self.weights_file = load_captioner_model(c.checkpoint, c.model, resolve_model(c.tokenizer),
                                                        c.model_overrides)
        missing = set(condition_of(self.group)) - model.modalities
        if missing:
            raise ValueError(f"{self.name}: the model in {c.checkpoint} has no {sorted(missing)} tower")
        self.model = model.to(self.device)
        self.gen = GenerationConfig(
            strategy="sample", top_k=c.top_k, num_return=c.num_captions, max_len=c.max_len
        )
        self._record = {
            "model": str(c.checkpoint),
            "weights_sha256": weights_checksum(str(self.weights_file)),
            "decoding": {
                "strategy": "top_k_sampling",
                "top_k": c.top_k,
                "num_captions": c.num_captions,
                "max_len": c.max_len,
                "seed": c.seed,
                **self.decoding(),
            },
            "prompt_version": None,
        }

    def prepare(self, row: dict[str, Any]) -> torch.Tensor | None:
        """One row's model input (no batch dim); None when there is nothing to caption (the
        field becomes ``[]``); raises ``SampleError`` for a row that cannot be used."""
        raise NotImplementedError

    def decoding(self) -> dict[str, Any]:
        """Input settings recorded in the provenance next to the sampling settings."""
        raise NotImplementedError

    def prepare_workers(self) -> int:
        """Threads preparing a batch's rows at once (more where ``prepare`` waits on a subprocess)."""
        return 1

    def _prepare_or_error(self, row: dict[str, Any]) -> torch.Tensor | SampleError | None:
        try:
            return self.prepare(row)
        except SampleError as e:
            return e

    def provenance(self) -> dict[str, Any]:
        """Checkpoint, weights sha256, decoding settings; no prompt (``prompt_version`` None)."""
        return self._record

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | SampleError]:
        """Captions for every row: inputs prepared per row, then one batched encode and decode."""
        import torch

        field = self.fields[0]
        results: list[dict[str, Any] | SampleError] = [{field: []} for _ in rows]
        todo: list[int] = []
        inputs: list[torch.Tensor] = []
        workers = min(self.prepare_workers(), len(rows))
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                prepared = list(pool.map(self._prepare_or_error, rows))
        else:
            prepared = [self._prepare_or_error(row) for row in rows]
        for i, x in enumerate(prepared):
            if isinstance(x, SampleError):
                results[i] = x
            elif x is not None:
                todo.append(i)
                inputs.append(x)
            else:
                results[i] = {field: [], EMPTY_REASON: self.no_input_reason}
        if not todo:
            return results
        keys = [str(rows[i]["key"]) for i in todo]
        uniforms = key_uniforms(keys, self.config.seed, self.gen.num_return, self.gen.max_len)
        batch = {self.input_key: torch.stack(inputs).to(self.device)}
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            ids = sample_caption_ids(self.model, batch, self.group, self.gen, uniforms)
        for i, item in zip(todo, ids, strict=True):
            results[i] = {field: [self.model.decode(s) for s in item]}
        return results


class VisionCaptioner(VASTCaptioner):
    """Captions each clip's frames with the VAST vision captioner (``cap%tv``) into ``vision_cap``."""

    name = "vision_caption"
    Config = VisionCaptionerConfig
    fields = ("vision_cap",)
    empty = {"vision_cap": []}
    needs = ("frames",)
    inputs = ("mp4",)
    group = "tv"
    input_key = "frames"

    def __init__(self, config: VisionCaptionerConfig | None = None):
        super().__init__(config)
        if self.config.num_frames < 1:
            raise ValueError(f"{self.name}: num_frames must be ≥ 1")
        self.image_size = self.model.cfg.vision.image_size

    def decoding(self) -> dict[str, Any]:
        """Frames per clip."""
        return {"num_frames": self.config.num_frames}

    def prepare(self, row: dict[str, Any]) -> torch.Tensor:
        """The clip's frames (N, S, S, 3) uint8 → (num_frames, 3, size, size), VAST's test transform."""
        from vast.model import frame_indices, preprocess_frames

        frames = row.get("frames")
        if isinstance(frames, list | tuple) and frames:  # a column that lost its tensor type in transit
            frames = np.stack([np.asarray(f) for f in frames])
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 \
                or frames.shape[-1] != 3 or 0 in frames.shape:
            got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else repr(frames)[:80]
            raise SampleError("decode_error", f"no usable frames (want uint8 (N, H, W, 3), got {got})")
        picked = frames[frame_indices(len(frames), self.config.num_frames, train=False)]
        return preprocess_frames(picked, self.image_size, train=False)
