"""Reference measurements of media bytes, by ffprobe and ffmpeg (never by our own parsers)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np


def video_frames(data: bytes) -> tuple[int, Fraction]:
    """(frames counted by decoding, frame rate) of an mp4's video stream, by ffprobe."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.mp4"
        path.write_bytes(data)
        args = ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                "-show_entries", "stream=nb_read_frames,r_frame_rate", "-of", "json", str(path)]
        out = subprocess.run(args, capture_output=True, check=True).stdout
    stream = json.loads(out)["streams"][0]
    return int(stream["nb_read_frames"]), Fraction(stream["r_frame_rate"])


def audio_samples(data: bytes, rate: int = 16000) -> np.ndarray:
    """The audio decoded by ffmpeg to mono int16 at ``rate`` (without resampling when it already is)."""
    args = ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", str(rate), "pipe:1"]
    out = subprocess.run(args, input=data, capture_output=True, check=True).stdout
    return np.frombuffer(out, np.int16)
