"""The exact input transforms of VAST, shared by the trainer and the captioners.

Vision: split a clip into n equal segments and take one frame per segment (random in training,
the middle at test); resize to the model resolution (training: RandomResizedCrop with scale
0.8-1 and a horizontal flip, the same for every frame of a clip); CLIP mean/std normalisation.
Audio: 16 kHz mono -> BEATs fbank -> padded 1024-frame slices (10.24 s) -> ``n`` groups of
slices, one slice per group (random in training, the middle at test). No audio -> zeros.
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


def frame_indices(num_frames: int, n: int, train: bool, rng: random.Random | None = None) -> list[int]:
    """Indices of ``n`` frames out of ``num_frames``: one per equal segment, random or middle."""
    if num_frames <= 0:
        raise ValueError("a clip needs at least one frame")
    edges = np.linspace(0, num_frames, n + 1).astype(int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        hi = max(hi, lo + 1)  # fewer frames than segments: segments share frames
        lo, hi = min(lo, num_frames - 1), min(hi, num_frames)
        out.append((rng or random).randrange(lo, hi) if train else (lo + hi - 1) // 2)
    return out


def _random_resized_crop_box(h: int, w: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision RandomResizedCrop box (top, left, height, width), scale (0.8, 1), ratio (3/4, 4/3)."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(0.8, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    side = min(h, w)  # fallback: the central square
    return (h - side) // 2, (w - side) // 2, side, side


def preprocess_frames(
    frames: np.ndarray | torch.Tensor, size: int = 224, train: bool = False, rng: random.Random | None = None
) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> normalised float (T, 3, size, size)."""
    x = torch.as_tensor(np.asarray(frames)).permute(0, 3, 1, 2).float().div_(255)  # (T, 3, H, W)
    if train:
        rng = rng or random.Random()
        top, left, ch, cw = _random_resized_crop_box(x.shape[2], x.shape[3], rng)
        x = x[:, :, top : top + ch, left : left + cw]
        if rng.random() < 0.5:
            x = x.flip(-1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x.clamp_(0, 1) - mean) / std


def audio_slices(
    waveform: np.ndarray | torch.Tensor | None,
    n: int,
    train: bool = False,
    rng: random.Random | None = None,
    mel_bins: int = 64,
) -> torch.Tensor:
    """16 kHz mono waveform (S,) in [-1, 1] -> ``n`` fbank slices (n, 1024, mel_bins); None -> zeros."""
    if waveform is None or len(waveform) == 0:
        return torch.zeros(n, SLICE_FRAMES, mel_bins)
    fbank = kaldi_fbank(torch.as_tensor(np.asarray(waveform, dtype=np.float32)), mel_bins)  # (F, mel)
    pad = -fbank.shape[0] % SLICE_FRAMES
    fbank = F.pad(fbank, (0, 0, 0, pad))
    total = fbank.shape[0] // SLICE_FRAMES
    groups = np.array_split(np.arange(total), n) if total >= n else [[i * total // n] for i in range(n)]
    pick = [(rng or random).choice(list(g)) if train else g[(len(g) + 1) // 2 - 1] for g in groups]
    return torch.stack([fbank[i * SLICE_FRAMES : (i + 1) * SLICE_FRAMES] for i in pick])


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
) -> dict[str, torch.Tensor]:
    """Model inputs from decoded media: ``frames`` (B, T, 3, size, size) and/or ``audio`` (B, A, 1024, 64).

    ``videos``: per clip, all decoded uint8 frames (N, H, W, 3), of which ``num_frames`` are sampled;
    ``waveforms``: per clip, 16 kHz mono float audio or None (silent).
    """
    batch = {}
    if videos is not None:
        batch["frames"] = torch.stack(
            [
                preprocess_frames(v[frame_indices(len(v), num_frames, train, rng)], size, train, rng)
                for v in videos
            ]
        )
    if waveforms is not None:
        batch["audio"] = torch.stack([audio_slices(w, num_clips, train, rng) for w in waveforms])
    return batch
