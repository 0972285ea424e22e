"""Media stage throughput on one CPU core: ``MediaCutter`` against a video2dataset-style baseline.

Both sides turn the same span requests over the same generated sources (``--clips`` videos of
``--seconds`` s, 640x360, 25 fps, AAC audio; span = the source minus ``--trim`` s at each end)
into the same outputs: an H.264 mp4 at most ``max_height`` rows high, a 16 kHz mono FLAC and
``num_frames`` RGB frames of ``frame_size``².

The baseline is NOT video2dataset itself (not installed here, and its downloader and writer
would time other things): it is a reimplementation, in this script, of the pass structure of
video2dataset's subsampler chain, one ffmpeg process per pass, as its subsamplers run them:

1. clipping — ``-f segment -segment_times START,END -c copy -reset_timestamps 1`` (its default
   low-precision cut: a stream copy into segments, keeping the segment of the span);
2. resolution/fps — re-encode the cut segment with ``scale=-2:H``;
3. audio — a separate pass from the cut segment to 16 kHz mono FLAC;
4. frames — a separate ffmpeg decode of the re-encoded mp4 with the ``fps`` filter (rate =
   num_frames / clip duration), scaled to frame_size², piped out as raw RGB.

Pass 2 runs in two variants, both timed: "v2d defaults" is what video2dataset's resolution
subsampler runs (no encoder options: libx264 preset medium, CRF 23, GOP 250, audio re-encoded
to AAC in the mp4); "our x264" uses MediaCutter's x264 settings and a video-only mp4, so its
ratio isolates the pass structure (one decode, one process) from the choice of preset.

The baseline gets every advantage that keeps its structure: frames from the small re-encoded
file, sources and intermediates read in place (video2dataset copies the bytes into a fresh temp
dir for every pass; MediaCutter writes its bytes to a temp file and runs ffprobe). Everything runs
sequentially, pinned to one core, ffmpeg ``-threads 1``, after one untimed warm-up clip per
side, interleaved clip by clip. Two figures per side: clips per wall-clock second on the pinned
core, and clips per CPU second (user+sys of this process and its ffmpeg children), which other
processes sharing the core do not distort.

    .venv/bin/python benchmarks/bench_media.py [--clips 20] [--seconds 15] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mediagen import make_video  # noqa: E402
from vast.pipeline.media import MediaConfig, MediaCutter  # noqa: E402
from vast.pipeline.stage import LEDGER_COLUMNS, batch_of  # noqa: E402


def _ffmpeg(args: list[str]) -> bytes:
    proc = subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args],
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode()[-1000:])
    return proc.stdout


# x264 options of the baseline's re-encode pass. "v2d defaults": what video2dataset's resolution
# subsampler runs (``ffmpeg -i in -vf scale=-2:H -reset_timestamps 1 out.mp4``: libx264's default
# preset medium, CRF 23, GOP 250, the audio re-encoded to AAC alongside). "our x264": MediaCutter's
# settings and a video-only mp4, so that ratio measures the pass structure alone.
BASELINES = {
    "v2d defaults": lambda c: ["-reset_timestamps", "1"],
    "our x264": lambda c: ["-an", "-c:v", "libx264", "-preset", c.preset, "-crf", str(c.crf),
                           "-pix_fmt", "yuv420p", "-g", str(round(c.gop_s * (c.fps or 25))),
                           "-movflags", "+faststart"],
}


def baseline_clip(src: Path, start: float, end: float, c: MediaConfig, work: Path,
                  encode: list[str]) -> tuple[bytes, bytes, np.ndarray]:
    """video2dataset's pass structure (see the module docstring) → (mp4, flac, frames)."""
    t = ["-threads", str(c.threads)]
    # 1. clipping: stream-copy segmenter, the span is segment 1 (0 is what precedes it)
    seg_dir = work / "seg"
    seg_dir.mkdir(exist_ok=True)
    _ffmpeg([*t, "-i", str(src), "-map", "0", "-c", "copy", "-f", "segment",
             "-segment_times", f"{start:.3f},{end:.3f}", "-reset_timestamps", "1", str(seg_dir / "%d.mp4")])
    seg = seg_dir / ("1.mp4" if start > 0 else "0.mp4")
    # 2. resolution/fps re-encode
    mp4 = work / "clip.mp4"
    vf = (f"fps={c.fps:g}," if c.fps else "") + f"scale=-2:{c.max_height}"
    _ffmpeg([*t, "-i", str(seg), "-vf", vf, *encode, *t, str(mp4)])
    # 3. audio pass
    flac = work / "clip.flac"
    _ffmpeg([*t, "-i", str(seg), "-map", "0:a:0", "-ac", "1", "-ar", str(c.audio_rate), "-c:a", "flac",
             str(flac)])
    # 4. frame extraction: a separate decode with the fps filter
    s = c.frame_size
    raw = _ffmpeg([*t, "-i", str(mp4), "-vf", f"fps={c.num_frames}/{end - start:.3f},scale={s}:{s}",
                   "-frames:v", str(c.num_frames), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    frames = np.frombuffer(raw, np.uint8).reshape(-1, s, s, 3)
    out = mp4.read_bytes(), flac.read_bytes(), frames
    shutil.rmtree(seg_dir)
    return out


def request_row(src: Path, start: float, end: float) -> dict:
    """A fetched span request as the fetch stage hands it to MediaCutter."""
    row = dict.fromkeys(LEDGER_COLUMNS, "")
    row.update(request=src.stem, key=src.stem, input=f"{src}:1", video_id=src.stem, source=str(src),
               start=start, end=end, meta="{}", skip_keys=[], n_clips=1, status="ok",
               media=src.read_bytes(), media_offset=0.0, source_info="{}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=20, help="number of source videos / span requests")
    ap.add_argument("--seconds", type=float, default=15.0, help="source length (10–20 s as VAST clips)")
    ap.add_argument("--trim", type=float, default=1.0, help="span = [trim, seconds - trim]")
    ap.add_argument("--size", default="640x360", help="source frame size")
    ap.add_argument("--repeat", type=int, default=1, help="timed rounds (each side, interleaved)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vast-bench-media",
                    help="where the generated sources are kept between runs")
    args = ap.parse_args()

    # One core for this process and every ffmpeg it starts (affinity is inherited).
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    c = MediaConfig(threads=1)

    args.cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sources = []
    for i in range(args.clips):
        path = args.cache / f"src{i:03d}_{args.size}_{args.seconds:g}s.mp4"
        if not path.exists():
            make_video(path, seconds=args.seconds, audio="tone", size=args.size, fps=25)
        sources.append(path)
    print(f"sources: {args.clips} x {args.seconds:g} s {args.size} 25 fps + AAC in {args.cache} "
          f"({time.perf_counter() - t0:.1f} s to prepare); pinned to CPU {core}, ffmpeg threads 1")
    span = (args.trim, args.seconds - args.trim)

    cutter = MediaCutter(c)
    names = ["MediaCutter", *(f"baseline, {b}" for b in BASELINES)]
    wall = dict.fromkeys(names, 0.0)
    cpu = dict.fromkeys(names, 0.0)
    sizes: dict[str, list[int]] = {k: [] for k in names}

    def timed(name: str, fn: Callable[..., Any], *fn_args: Any) -> Any:
        w, c0 = time.perf_counter(), _cpu_s()
        result = fn(*fn_args)
        wall[name] += time.perf_counter() - w
        cpu[name] += _cpu_s() - c0
        return result

    with tempfile.TemporaryDirectory(prefix="vast-bench-") as tmp:
        work = Path(tmp)
        # Warm-up, untimed: imports (decord), page cache, ffmpeg's shared libraries.
        cutter(batch_of([request_row(sources[0], *span)]))
        for encode in BASELINES.values():
            baseline_clip(sources[0], *span, c, work, encode(c))
        for _ in range(args.repeat):
            # Interleaved per clip, so that load from other processes hits every side alike.
            for src in sources:
                row = request_row(src, *span)
                out = timed("MediaCutter", cutter, batch_of([row]))
                assert out["status"][0] == "ok", out["message"][0]
                assert out["frames"].shape == (1, c.num_frames, c.frame_size, c.frame_size, 3)
                sizes["MediaCutter"].append(len(out["mp4"][0]))
                for b, encode in BASELINES.items():
                    mp4, _, frames = timed(f"baseline, {b}", baseline_clip, src, *span, c, work, encode(c))
                    assert frames.shape == (c.num_frames, c.frame_size, c.frame_size, 3), frames.shape
                    sizes[f"baseline, {b}"].append(len(mp4))

    n = args.clips * args.repeat
    clip_s = span[1] - span[0]
    print(f"{n} span requests of {clip_s:g} s each; clips/s per core by wall clock on the pinned core, "
          "and by CPU time (user+sys of this process and its ffmpeg children: immune to other load)")
    for k in names:
        print(f"{k:26s} wall {n / wall[k]:5.2f} clips/s  cpu {n / cpu[k]:5.2f} clips/cpu-s  "
              f"({cpu[k] / n * 1000:5.0f} cpu-ms/clip, mean mp4 {np.mean(sizes[k]) / 1e3:.0f} kB)")
    for b in BASELINES:
        k = f"baseline, {b}"
        print(f"ratio MediaCutter / baseline, {b}: wall {wall[k] / wall['MediaCutter']:.2f}x  "
              f"cpu {cpu[k] / cpu['MediaCutter']:.2f}x")


def _cpu_s() -> float:
    """CPU seconds of this process plus its finished children (every ffmpeg is waited for)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


if __name__ == "__main__":
    main()
