"""Fixtures for the captioner tests: tiny captioner files, and clip rows as the media stage makes them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from vast.captioners.tiny import write_tiny_captioners
from vast.pipeline.keys import clip_key
from vast.pipeline.media import MediaConfig, MediaCutter
from vast.pipeline.sample_media import make_video
from vast.pipeline.stage import LEDGER_COLUMNS, batch_of, rows_of

torch.set_num_threads(1)  # the CI machine has 2 shared cores

# Small encodes keep the media stage cheap; the captioners see its real output.
MEDIA = MediaConfig(max_height=120, fps=10, gop_s=0.5, num_frames=8, frame_size=64,
                    min_clip_s=2.0, max_clip_s=12.0)


@pytest.fixture(scope="session")
def tiny_captioners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths of the tiny tokenizer and the tiny vision / audio captioner checkpoints."""
    return write_tiny_captioners(tmp_path_factory.mktemp("tiny-captioners"))


def ledger_row(video_id: str, source: str, start: float = math.nan, end: float = math.nan) -> dict:
    """A fresh ok row with every ledger column (a span request when start/end are given)."""
    key = video_id if math.isnan(start) else clip_key(video_id, start, end)
    row = {
        "request": key, "key": key, "input": "ids.txt:1", "video_id": video_id, "source": source,
        "start": start, "end": end, "meta": "{}", "skip_keys": [], "n_clips": 1, "status": "ok",
        "error_class": "", "message": "", "stage": "",
    }
    assert set(row) == set(LEDGER_COLUMNS)
    return row


@pytest.fixture(scope="session")
def media_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Clip rows cut by the real media stage: ``tone0``/``tone1`` (two spans of a video with a tone)
    and ``silent`` (a video without an audio track)."""
    d = tmp_path_factory.mktemp("captioner-media")
    tone = make_video(d / "tone.mp4", seconds=6, audio="tone", size="160x120")
    silent = make_video(d / "silent.mp4", seconds=3, audio=None, size="160x120")
    requests = [
        ("tone0", ledger_row("tone", str(tone), 0.0, 3.0), tone),
        ("tone1", ledger_row("tone", str(tone), 3.0, 6.0), tone),
        ("silent", ledger_row("silent", str(silent), 0.0, 3.0), silent),
    ]
    rows = []
    for _, row, path in requests:
        rows.append({**row, "media": path.read_bytes(), "media_offset": 0.0,
                     "source_info": json.dumps({"duration": 6.0})})
    out = rows_of(MediaCutter(MEDIA)(batch_of(rows)))
    assert [r["status"] for r in out] == ["ok"] * 3, [r["message"] for r in out]
    return {name: row for (name, _, _), row in zip(requests, out, strict=True)}


def synthetic_rows(n: int, seed: int = 0, size: int = 64) -> list[dict]:
    """``n`` ok clip rows with random frames and no audio, keys ``synth_<i>_0_1000``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = ledger_row(f"synth_{i}", f"/media/synth_{i}.mp4", 0.0, 1.0)
        row |= {"frames": rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), "flac": b"", "mp4": b"",
                "clip_info": json.dumps({"has_audio": False, "audio_missing": "no audio stream"})}
        rows.append(row)
    return rows
