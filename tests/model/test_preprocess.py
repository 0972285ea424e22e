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


def test_frame_indices_middle_at_test_random_in_segment_when_training():
    assert frame_indices(80, 8, train=False) == [4, 14, 24, 34, 44, 54, 64, 74]
    assert frame_indices(10, 1, train=False) == [4]
    rng = random.Random(0)
    for _ in range(20):
        idx = frame_indices(80, 8, train=True, rng=rng)
        assert all(10 * i <= j < 10 * (i + 1) for i, j in enumerate(idx))
    # fewer frames than segments: still n valid indices
    assert all(0 <= i < 3 for i in frame_indices(3, 8, train=False))
    assert len(frame_indices(3, 8, train=True)) == 8


def test_preprocess_frames_clip_normalisation():
    frames = np.full((2, 40, 60, 3), 255, dtype=np.uint8)
    out = preprocess_frames(frames, size=32)
    assert out.shape == (2, 3, 32, 32)
    want = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[0, :, 5, 5], want, atol=1e-5)


def test_train_augmentation_is_shared_by_frames_and_seeded():
    g = np.random.default_rng(0)
    frame = g.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    frames = np.stack([frame, frame])
    a = preprocess_frames(frames, 32, train=True, rng=random.Random(3))
    b = preprocess_frames(frames, 32, train=True, rng=random.Random(3))
    assert torch.equal(a, b)
    assert torch.equal(a[0], a[1])  # same crop and flip for every frame of a clip
    c = preprocess_frames(frames, 32, train=True, rng=random.Random(4))
    assert not torch.equal(a, c)
    assert a.shape == (2, 3, 32, 32)


def test_fbank_front_end_matches_beats_recipe():
    import torchaudio.compliance.kaldi as kaldi

    wav = torch.sin(torch.arange(16000) / 16000 * 2 * torch.pi * 440) * 0.3
    ref = kaldi.fbank(
        wav[None] * 2**15, num_mel_bins=64, sample_frequency=16000, frame_length=25, frame_shift=10
    )
    out = kaldi_fbank(wav)
    assert out.shape == (98, 64)
    assert torch.allclose(out, (ref - FBANK_MEAN) / (2 * FBANK_STD))


def test_audio_slices_groups_and_padding():
    wav = np.random.default_rng(0).standard_normal(16000 * 25).astype(np.float32) * 0.1  # 25 s -> 3 slices
    out = audio_slices(wav, 2, train=False)
    assert out.shape == (2, 1024, 64)
    full = kaldi_fbank(torch.from_numpy(wav))
    assert torch.equal(out[0], full[:1024])  # groups [0, 1] and [2]: middle of the first is slice 0
    assert torch.equal(out[1, : full.shape[0] - 2048], full[2048:])
    assert (out[1, full.shape[0] - 2048 :] == 0).all()  # padded tail
    one = audio_slices(wav[:16000], 3, train=True, rng=random.Random(0))  # 1 slice shared by 3 groups
    assert one.shape == (3, 1024, 64) and torch.equal(one[0], one[2])


@pytest.mark.parametrize("wav", [None, np.zeros(0, dtype=np.float32)])
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
