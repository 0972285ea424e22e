import random

import numpy as np
import pytest
import torch

from vast.model.audio import FBANK_MEAN, FBANK_STD, kaldi_fbank
from vast.model.preprocess import (
    CLIP_MEAN,
    CLIP_STD,
    audio_slices,
    frame_indices,
    preprocess_frames,
    resample,
)

# Expected values below are worked out by hand from upstream's rules (utils/tool.py::split, the
# test pick seg[(len + 1) // 2 - 1], data/audio_mapper.py's padding), not from our code.


@pytest.mark.parametrize(
    ("frames", "n", "want"),
    [
        (10, 4, [1, 4, 6, 8]),  # divmod(10, 4) = (2, 2): [0,1,2] [3,4,5] [6,7] [8,9]
        (80, 8, [4, 14, 24, 34, 44, 54, 64, 74]),  # segments of 10, the 5th of each
        (7, 3, [1, 3, 5]),  # [0,1,2] [3,4] [5,6]
        (16, 5, [1, 5, 8, 11, 14]),  # [0..3] [4,5,6] [7,8,9] [10,11,12] [13,14,15]
        (3, 8, [0, 1, 2, 2, 2, 2, 2, 2]),  # fewer frames than segments: the last frame repeats
        (10, 1, [4]),
    ],
)
def test_test_frame_indices_follow_upstream_split(frames, n, want):
    assert frame_indices(frames, n, train=False) == want


def test_training_frame_indices_are_random_within_upstream_segments():
    rng = random.Random(0)
    bounds = [(0, 2), (3, 5), (6, 7), (8, 9)]  # the 10-frame / 4-segment split above
    seen = set()
    for _ in range(200):
        idx = frame_indices(10, 4, train=True, rng=rng)
        assert all(lo <= i <= hi for i, (lo, hi) in zip(idx, bounds, strict=True))
        seen.add(tuple(idx))
    assert {i[0] for i in seen} == {0, 1, 2} and {i[2] for i in seen} == {6, 7}


def _clip(h: int, w: int, t: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _reference(frames: np.ndarray, *steps) -> torch.Tensor:
    """torchvision transforms as upstream's vision_mapper composes them, on frames / 255."""
    from torchvision.transforms import Compose, Normalize

    x = torch.from_numpy(frames.transpose(0, 3, 1, 2) / 255.0)  # float64, as upstream
    return Compose([*steps, Normalize(CLIP_MEAN, CLIP_STD)])(x).float()


# Upstream's torchvision predates antialias-by-default for tensors: its Resize is a plain bilinear one.
def test_none_transform_is_a_bilinear_squash_without_antialias_as_upstream():
    from torchvision.transforms import Resize

    frames = _clip(90, 160)
    want = _reference(frames, Resize((32, 32), antialias=False))
    for train in (False, True):  # upstream "none" does not augment in training either
        got = preprocess_frames(frames, 32, train=train, rng=random.Random(0))
        assert torch.allclose(got, want, atol=1e-5)
    smooth = preprocess_frames(frames, 32, antialias=True)
    assert torch.allclose(smooth, _reference(frames, Resize((32, 32), antialias=True)), atol=1e-5)
    assert (smooth - want).abs().max() > 0.05  # the option really changes the pixels


@pytest.mark.parametrize("shape", [(90, 160), (160, 90), (41, 47)])
def test_crop_flip_test_transform_is_short_side_resize_then_center_crop(shape):
    from torchvision.transforms import CenterCrop, Resize

    frames = _clip(*shape)
    want = _reference(frames, Resize(32, antialias=False), CenterCrop(32))
    got = preprocess_frames(frames, 32, train=False, transforms="crop_flip")
    assert got.shape == (2, 3, 32, 32) and torch.allclose(got, want, atol=1e-4)  # float32 vs float64


def test_crop_flip_training_crop_is_a_square_of_80_to_100_percent_else_the_central_square():
    from torchvision.transforms import CenterCrop, Resize

    wide = _clip(90, 160)  # no square of >= 80% of the area fits: torchvision falls back to the center
    centre = _reference(wide, CenterCrop(90), Resize((32, 32), antialias=False))
    flips = set()
    for seed in range(12):
        got = preprocess_frames(wide, 32, train=True, rng=random.Random(seed), transforms="crop_flip")
        flipped = bool(torch.allclose(got, centre.flip(-1), atol=1e-5))
        assert flipped or torch.allclose(got, centre, atol=1e-5)
        flips.add(flipped)
    assert flips == {True, False}
    from vast.model.preprocess import _square_crop_box

    rng = random.Random(0)
    for _ in range(200):  # near-square frames: a random square of 80-100% of the area
        top, left, side = _square_crop_box(41, 47, rng)
        assert 0.8 * 41 * 47 - 41 <= side * side <= 41 * 47 and top + side <= 41 and left + side <= 47


def test_unknown_transform_is_refused():
    with pytest.raises(ValueError, match="crop_flip"):
        preprocess_frames(_clip(8, 8), 4, transforms="randaug")


def test_preprocess_frames_clip_normalisation():
    frames = np.full((2, 40, 60, 3), 255, dtype=np.uint8)
    out = preprocess_frames(frames, size=32)
    assert out.shape == (2, 3, 32, 32)
    want = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0, :, 5, 5], want, atol=1e-5)


def test_fbank_front_end_matches_beats_recipe():
    import torchaudio.compliance.kaldi as kaldi

    wav = torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * 440) * 0.3
    ref = kaldi.fbank(
        wav[None] * 2**15, num_mel_bins=64, sample_frequency=16000, frame_length=25, frame_shift=10
    )
    out = kaldi_fbank(wav)
    assert out.shape == (98, 64)
    assert torch.allclose(out, (ref - FBANK_MEAN) / (2 * FBANK_STD))


def _frames_of(samples: int) -> int:
    return 1 + (samples - 400) // 160  # Kaldi frames: 25 ms window, 10 ms shift, snip edges


def _noise(samples: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1


def test_audio_slices_groups_and_padding():
    wav = _noise(16000 * 25)  # 2498 frames: padded by max(2048 - 2498, 1024 - 450) = 574 -> 3 slices
    assert _frames_of(len(wav)) == 2498
    out = audio_slices(wav, 2, train=False)
    assert out.shape == (2, 1024, 64)
    full = kaldi_fbank(torch.from_numpy(wav))
    assert torch.equal(out[0], full[:1024])  # groups [0, 1] and [2]: pick (2 + 1) // 2 - 1 = 0, then 2
    assert torch.equal(out[1, : full.shape[0] - 2048], full[2048:])
    assert (out[1, full.shape[0] - 2048 :] == 0).all()  # padded tail
    rng = random.Random(0)
    firsts = {int(torch.equal(audio_slices(wav, 2, True, rng)[0], full[1024:2048])) for _ in range(20)}
    assert firsts == {0, 1}  # training draws slice 0 or 1 from the first group


def test_short_audio_leaves_the_missing_slices_zero_as_upstream():
    wav = _noise(16000 * 3)  # 298 frames, 3 slices wanted: padded by max(3072 - 298, 1024 - 298)
    out = audio_slices(wav, 3, train=False)
    full = kaldi_fbank(torch.from_numpy(wav))
    assert full.shape[0] == _frames_of(len(wav)) == 298
    assert torch.equal(out[0, :298], full) and not out[0, 298:].any()
    assert not out[1].any() and not out[2].any()  # zero-filled, not repeats of slice 0


def test_a_length_of_exactly_1024_frames_times_k_gets_an_extra_zero_slice():
    wav = _noise(400 + 2047 * 160)  # exactly 2048 frames: padded by max(1024 - 2048, 1024 - 0) = 1024
    full = kaldi_fbank(torch.from_numpy(wav))
    assert full.shape[0] == 2048
    out = audio_slices(wav, 1, train=False)  # 3 slices, one group: pick (3 + 1) // 2 - 1 = 1
    assert torch.equal(out[0], full[1024:2048])
    wav = _noise(16000 * 20 + 7680)  # 20.48 s is 2046 frames: padded by 2 -> 2 slices, pick 0
    assert _frames_of(len(wav)) == 2046
    assert torch.equal(audio_slices(wav, 1)[0, :1024], kaldi_fbank(torch.from_numpy(wav))[:1024])


@pytest.mark.parametrize("wav", [None, np.zeros(0, dtype=np.float32), np.zeros(399, dtype=np.float32)])
def test_missing_audio_is_zeros(wav):
    out = audio_slices(wav, 2)
    assert out.shape == (2, 1024, 64) and not out.any()


def test_resample_to_16k():
    assert resample(torch.zeros(44100), 44100).shape == (16000,)


def test_media_batch_samples_frames_and_audio_for_the_model():
    from vast.model.preprocess import media_batch

    videos = [np.zeros((30, 40, 50, 3), np.uint8), np.full((7, 20, 20, 3), 255, np.uint8)]
    batch = media_batch(videos, [None, np.zeros(16000, np.float32)], num_frames=4, num_clips=2, size=32)
    assert batch["frames"].shape == (2, 4, 3, 32, 32) and batch["audio"].shape == (2, 2, 1024, 64)
    assert (batch["frames"][1] > 0).all() and (batch["frames"][0] < 0).all()
