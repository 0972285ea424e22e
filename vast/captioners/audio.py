"""The audio captioner stage: VAST's audio captioner (BEATs + BERT, task ``cap%ta``).

Each ok row's ``flac`` (the clip's 16 kHz mono track from the media stage) is decoded, turned into
BEATs fbank slices by the model's own test-time transform (``num_clips`` groups of 10.24 s slices,
the middle slice of each group) and the batch is captioned at once: ``num_captions`` top-k sampled
captions per clip in ``audio_cap``. A clip without audio (``flac`` is b"") gets ``audio_cap == []``:
that is not a failure, and the field's provenance says why (``empty_reason``).
Loading, batching and the per-clip deterministic sampling are shared with the vision captioner
(:class:`vast.captioners.vision.VASTCaptioner`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vast.captioners.base import decode_audio
from vast.captioners.vision import CaptionerConfig, VASTCaptioner

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000  # BEATs' rate; the media stage writes the FLAC at it, decode_audio resamples if not


@dataclass
class AudioCaptionerConfig(CaptionerConfig):
    """The audio captioner: BEATs + BERT, captions from the clip's audio track."""

    model: str = "audio-captioner"
    """Named model config an upstream checkpoint is loaded into (the released audio captioner's)."""
    num_clips: int = 3
    """Audio slices per clip the model sees (VAST's audio captioner: 3), one from each equal group
    of the clip's 10.24 s fbank slices."""
    decode_workers: int = 4
    """FLACs of a batch decoded at once (one ffmpeg process each): decoding, not the model, bounds a
    small model's throughput when clips are decoded one after another."""


class AudioCaptioner(VASTCaptioner):
    """Captions each clip's audio with the VAST audio captioner (``cap%ta``) into ``audio_cap``."""

    name = "audio_caption"
    Config = AudioCaptionerConfig
    fields = ("audio_cap",)
    empty = {"audio_cap": []}
    needs = ("audio",)
    inputs = ("flac",)
    no_input_reason = "the audio track has no samples"
    group = "ta"
    input_key = "audio"

    def __init__(self, config: AudioCaptionerConfig | None = None):
        super().__init__(config)
        if self.config.num_clips < 1 or self.config.decode_workers < 1:
            raise ValueError(f"{self.name}: num_clips and decode_workers must be ≥ 1")
        self.mel_bins = self.model.cfg.audio.mel_bins

    def decoding(self) -> dict[str, Any]:
        """Audio slices per clip."""
        return {"num_clips": self.config.num_clips}

    def prepare_workers(self) -> int:
        """``decode_workers``: ffmpeg runs outside the GIL, so threads overlap the decodes."""
        return self.config.decode_workers

    def prepare(self, row: dict[str, Any]) -> torch.Tensor | None:
        """The clip's FLAC → fbank slices (num_clips, 1024, mel_bins); None when it has no audio."""
        from vast.model import audio_slices

        data = row.get("flac") or b""
        if not data:
            return None
        waveform = decode_audio(data, SAMPLE_RATE)  # raises SampleError("decode_error") on bad bytes
        if len(waveform) == 0:  # a track without samples: as silent as a missing one
            return None
        return audio_slices(waveform, self.config.num_clips, train=False, mel_bins=self.mel_bins)
