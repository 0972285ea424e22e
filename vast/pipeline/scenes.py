"""Where a whole video is cut into clips: ffmpeg scene detection, then a pure clip planner.

``detect_cuts`` runs one cheap ffmpeg decode (fast decoder flags, frames dropped to a few per
second and shrunk before the ``scene`` score is computed) and returns the times of the scene
changes. ``plan_clips`` turns a duration and those times into clips between ``min_s`` and
``max_s`` long, as VAST-27M's 5–30 s clips. Both are deterministic for the same input: resume
recomputes the same clip keys and skips the committed ones.
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

# Analysis rate and size: a cut is located to within 1/ANALYSIS_FPS s, and the score of a
# 96-pixel-high frame is as telling as a full-size one at a fraction of the filter work.
ANALYSIS_FPS = 5.0
ANALYSIS_HEIGHT = 96

_PTS_TIME = re.compile(rb"pts_time:(-?[0-9.]+(?:e[-+]?\d+)?)")


class SceneDetectionError(RuntimeError):
    """ffmpeg could not decode the video for scene detection; ``stderr`` holds its last words."""

    def __init__(self, message: str, stderr: str):
        super().__init__(f"{message}: {stderr}")
        self.stderr = stderr


def detect_cuts(path: str | Path, threshold: float, *, fps: float = ANALYSIS_FPS,
                height: int = ANALYSIS_HEIGHT, threads: int = 1,
                timeout_s: float | None = None) -> list[float]:
    """Scene-change times (seconds from the start of the file, sorted) in ``path``'s first video stream.

    ``threshold`` is ffmpeg's ``scene`` score in [0, 1] (mean absolute difference of consecutive
    analysed frames, normalised); 0.3 catches hard cuts and ignores motion inside a shot.
    Raises ``SceneDetectionError`` when ffmpeg fails, ``subprocess.TimeoutExpired`` on timeout.
    """
    graph = f"fps={fps:g},scale=-2:{height}:flags=fast_bilinear,select='gt(scene,{threshold:g})'," \
            "metadata=print:file=-"
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-threads", str(threads),
            # The scores only need the picture roughly: skip non-reference frames and deblocking.
            "-skip_frame", "noref", "-skip_loop_filter", "all",
            "-i", str(path), "-map", "0:v:0", "-an", "-sn", "-dn",
            "-filter_threads", str(threads), "-vf", graph, "-f", "null", "-"]
    proc = subprocess.run(args, capture_output=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise SceneDetectionError("scene detection failed", stderr_tail(proc.stderr))
    times = {float(m) for m in _PTS_TIME.findall(proc.stdout)}
    return sorted(t for t in times if math.isfinite(t) and t > 0)


def plan_clips(duration: float, cuts: list[float], min_s: float = 5.0,
               max_s: float = 30.0) -> list[tuple[float, float]]:
    """Clips ``[(start, end), ...]`` covering ``[0, duration]`` with boundaries at scene cuts.

    Pieces between cuts shorter than ``min_s`` are merged, shortest first, into their shorter
    neighbour; pieces longer than ``max_s`` are then split evenly into the fewest parts that
    fit. A video shorter than ``min_s`` stays one clip. Times are rounded to milliseconds, the
    resolution of clip keys, so a clip's key and its span always agree.
    """
    if max_s < 2 * min_s:
        # A piece just over max_s could not be split into two pieces of at least min_s.
        raise ValueError(f"max_s ({max_s}) must be at least twice min_s ({min_s})")
    duration = _ms(duration)
    if duration <= 0:
        return []
    inner = sorted({_ms(c) for c in cuts if 0 < _ms(c) < duration})
    bounds = [0.0, *inner, duration]
    pieces = [[a, b] for a, b in zip(bounds, bounds[1:], strict=False)]

    while len(pieces) > 1:
        # Shortest piece below min_s (earliest on ties), or none left to merge.
        i = min(range(len(pieces)), key=lambda k: (pieces[k][1] - pieces[k][0], k))
        if pieces[i][1] - pieces[i][0] >= min_s:
            break
        left = pieces[i - 1][1] - pieces[i - 1][0] if i > 0 else math.inf
        right = pieces[i + 1][1] - pieces[i + 1][0] if i + 1 < len(pieces) else math.inf
        j = i - 1 if left <= right else i + 1
        a, b = min(i, j), max(i, j)
        pieces[a:b + 1] = [[pieces[a][0], pieces[b][1]]]

    clips: list[tuple[float, float]] = []
    for a, b in pieces:
        n = max(1, math.ceil((b - a) / max_s - 1e-9))
        edges = [a] + [_ms(a + (b - a) * k / n) for k in range(1, n)] + [b]
        clips += list(zip(edges, edges[1:], strict=False))
    return clips


def stderr_tail(stderr: bytes | str, limit: int = 2000) -> str:
    """The last ``limit`` characters of a process's stderr: where ffmpeg says what went wrong."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return text.strip()[-limit:]


def _ms(t: float) -> float:
    return round(t * 1000) / 1000
