"""The exact input transforms of VAST, shared by the trainer and the captioners.

Every rule follows upstream VAST (TXH-mercury/VAST 410ca47); the file it follows is named on
each function. In short:

- Frames (``data/vision_mapper.py`` + ``utils/tool.py::split``): the frame indices are split
  into ``n`` segments by divmod, the larger segments first (fewer frames than segments: the last
  frame repeats); training takes a random frame per segment, testing ``seg[(len + 1) // 2 - 1]``.
- Frame transform (``data/vision_mapper.py``): ``none`` (every config but MSRVTT's, the
  captioners included) squashes to size x size with bilinear interpolation WITHOUT antialiasing,
  in training too; ``crop_flip`` (the MSRVTT configs) trains on RandomResizedCrop(scale 0.8-1,
  ratio 1) + horizontal flip and tests on a short-side resize + center crop. Our antialiased
  squash is the option ``antialias=True``.
- Audio (``data/audio_mapper.py``): BEATs fbank, zero-padded by ``max(1024 n - F, 1024 - F % 1024)``
  frames (so missing slices are zeros, and a length that is a multiple of 1024 gets one extra
  zero slice), cut into 1024-frame slices, split into ``n`` groups as frames are, one slice per
  group (random in training, ``(len + 1) // 2 - 1`` at test). No audio: zeros.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
import torch.nn.functional as F

from .audio import SAMPLE_RATE, kaldi_fbank

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SLICE_FRAMES = 1024  # fbank frames per audio slice (10 ms shift -> 10.24 s)
FBANK_WINDOW = 400  # samples in one 25 ms window: shorter audio has no fbank frame at all
TRANSFORMS = ("none", "crop_flip")


def split_segments(count: int, n: int) -> list[list[int]]:
    """``range(count)`` in ``n`` consecutive segments, as upstream ``utils/tool.py::split``.

    ``divmod(count, n) = (k, m)``: the first ``m`` segments hold ``k + 1`` items, the rest ``k``;
    with fewer items than segments the last item is repeated until there are ``n``.
    """
    if count <= 0:
        raise ValueError("nothing to split: a clip needs at least one frame")
    items = list(range(count)) + [count - 1] * max(0, n - count)
    k, m = divmod(len(items), n)
    return [items[i * k + min(i, m) : (i + 1) * k + min(i + 1, m)] for i in range(n)]


def pick(segment: list[int], train: bool, rng: random.Random | None = None) -> int:
    """One item of a segment: random in training, ``segment[(len + 1) // 2 - 1]`` at test (upstream)."""
    return (rng or random).choice(segment) if train else segment[(len(segment) + 1) // 2 - 1]


def frame_indices(num_frames: int, n: int, train: bool, rng: random.Random | None = None) -> list[int]:
    """Indices of ``n`` frames out of ``num_frames``: one per segment of :func:`split_segments`."""
    return [pick(seg, train, rng) for seg in split_segments(num_frames, n)]


def _resize(x: torch.Tensor, h: int, w: int, antialias: bool) -> torch.Tensor:
    """Bilinear resize of (T, 3, H, W) (torchvision ``Resize`` on tensors: align_corners False)."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)


def _square_crop_box(h: int, w: int, rng: random.Random) -> tuple[int, int, int]:
    """torchvision ``RandomResizedCrop.get_params`` with scale (0.8, 1) and ratio (1, 1): (top, left, side).

    Ten tries at a square of 80-100% of the area; when none fits (any frame wider or taller than
    about 1.25:1) the fallback is the central square of the short side.
    """
    for _ in range(10):
        side = round(math.sqrt(h * w * rng.uniform(0.8, 1.0)))
        if 0 < side <= w and 0 < side <= h:
            return rng.randint(0, h - side), rng.randint(0, w - side), side
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side


def preprocess_frames(
    frames: np.ndarray | torch.Tensor,
    size: int = 224,
    train: bool = False,
    rng: random.Random | None = None,
    transforms: str = "none",
    antialias: bool = False,
) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> CLIP-normalised float (T, 3, size, size), as upstream ``vision_mapper``.

    ``transforms``: ``none`` squashes to size x size (train and test); ``crop_flip`` trains on a
    random square crop of 80-100% of the area + flip (one draw for all frames of a clip) and tests
    on a short-side resize to ``size`` and a center crop. ``antialias`` (ours; upstream resizes
    without) low-passes before downscaling.
    """
    if transforms not in TRANSFORMS:
        raise ValueError(f"vision transforms {transforms!r}: one of {TRANSFORMS}")
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float().div_(255)  # (T, 3, H, W)
    H, W = x.shape[-2:]
    if transforms == "none":
        x = _resize(x, size, size, antialias)
    elif train:
        rng = rng or random.Random()
        top, left, side = _square_crop_box(H, W, rng)
        x = _resize(x[:, :, top : top + side, left : left + side], size, size, antialias)
        if rng.random() < 0.5:
            x = x.flip(-1)
    else:  # Resize(size) keeps the aspect (long side truncated), then CenterCrop(size)
        h, w = (int(size * H / W), size) if W <= H else (size, int(size * W / H))
        x = _resize(x, h, w, antialias)
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # round half to even
        x = x[:, :, top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def audio_slices(
    waveform: np.ndarray | torch.Tensor | None,
    n: int,
    train: bool = False,
    rng: random.Random | None = None,
    mel_bins: int = 64,
) -> torch.Tensor:
    """16 kHz mono waveform (S,) in [-1, 1] -> ``n`` fbank slices (n, 1024, mel_bins); None -> zeros.

    Upstream ``data/audio_mapper.py``: the fbank (F frames) is zero-padded by
    ``max(1024 n - F, 1024 - F % 1024)`` frames, cut into 1024-frame slices, the slices split into
    ``n`` groups by :func:`split_segments` and one slice taken per group by :func:`pick`.
    """
    if waveform is None or len(waveform) < FBANK_WINDOW:  # no audio, or not one 25 ms window of it
        return torch.zeros(n, SLICE_FRAMES, mel_bins)
    fbank = kaldi_fbank(torch.as_tensor(np.asarray(waveform, dtype=np.float32)), mel_bins)  # (F, mel)
    frames = fbank.shape[0]
    pad = max(SLICE_FRAMES * n - frames, SLICE_FRAMES - frames % SLICE_FRAMES)
    fbank = F.pad(fbank, (0, 0, 0, pad))
    total = fbank.shape[0] // SLICE_FRAMES
    chosen = [pick(g, train, rng) for g in split_segments(total, n)]
    return torch.stack([fbank[i * SLICE_FRAMES : (i + 1) * SLICE_FRAMES] for i in chosen])


def resample(waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mono waveform at ``sample_rate`` -> 16 kHz (the rate BEATs expects)."""
    if sample_rate == SAMPLE_RATE:
        return waveform
    import torchaudio.functional as AF

    return AF.resample(waveform, sample_rate, SAMPLE_RATE)


def media_batch(
    videos: list[np.ndarray] | None = None,
    waveforms: list[np.ndarray | None] | None = None,
    num_frames: int = 8,
    num_clips: int = 1,
    size: int = 224,
    train: bool = False,
    rng: random.Random | None = None,
    transforms: str = "none",
) -> dict[str, torch.Tensor]:
    """Model inputs from decoded media: ``frames`` (B, T, 3, size, size) and/or ``audio`` (B, A, 1024, 64).

    ``videos``: per clip, all decoded uint8 frames (N, H, W, 3), of which ``num_frames`` are sampled;
    ``waveforms``: per clip, 16 kHz mono float audio or None (silent).
    """
    batch = {}
    if videos is not None:
        batch["frames"] = torch.stack(
            [
                preprocess_frames(
                    v[frame_indices(len(v), num_frames, train, rng)], size, train, rng, transforms
                )
                for v in videos
            ]
        )
    if waveforms is not None:
        batch["audio"] = torch.stack([audio_slices(w, num_clips, train, rng) for w in waveforms])
    return batch
