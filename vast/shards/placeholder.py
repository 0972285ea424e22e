"""Placeholder media: the typed empties that stand in for a track a clip does not have.

Every sample carries an ``mp4`` and a ``flac`` (``vast.shards.schema``), so a clip without audio
gets digital silence and an audio file gets black frames, each lasting exactly the clip's span
(the same rule as real media: round(duration × rate) samples, round(duration × fps) frames).
Any decoder opens them; ``json.has_audio``/``has_video`` say they are placeholders.
"""

from __future__ import annotations

import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

PLACEHOLDER_FPS = 25
PLACEHOLDER_SIZE = 64  # pixels a side: black H.264 costs a few hundred bytes a second


@lru_cache(maxsize=64)
def silent_flac(seconds: float, rate: int) -> bytes:
    """Mono FLAC of round(seconds × rate) zero samples (about 2 KB a second)."""
    samples = max(1, round(seconds * rate))
    return _ffmpeg(["-f", "lavfi", "-i", f"anullsrc=r={rate}:cl=mono", "-af", f"atrim=end_sample={samples}",
                    "-c:a", "flac"], ".flac")


@lru_cache(maxsize=64)
def black_mp4(seconds: float) -> bytes:
    """H.264 mp4 of round(seconds × 25) black frames (at least one), 64×64, faststart."""
    frames = max(1, round(seconds * PLACEHOLDER_FPS))
    size = f"{PLACEHOLDER_SIZE}x{PLACEHOLDER_SIZE}"
    return _ffmpeg(["-f", "lavfi", "-i", f"color=c=black:s={size}:r={PLACEHOLDER_FPS}",
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", "-movflags", "+faststart"], ".mp4")


def _ffmpeg(args: list[str], suffix: str) -> bytes:
    # a file, not a pipe: the mp4 muxer seeks back to write its index (faststart)
    with tempfile.TemporaryDirectory(prefix="vast-placeholder-") as tmp:
        out = Path(tmp) / f"placeholder{suffix}"
        proc = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", *args,
                               "-map_metadata", "-1", str(out)], capture_output=True, timeout=120)
        if proc.returncode != 0 or not out.exists():
            message = proc.stderr.decode(errors="replace")[-500:]
            raise RuntimeError(f"ffmpeg could not make a placeholder: {message}")
        return out.read_bytes()
