"""The media stage: downloaded bytes → clips (small H.264 mp4, 16 kHz mono FLAC, sampled frames).

Per request: the fetched media is a local file (``media_path``, when fetch ran in the same worker)
or bytes written to a temporary file (``media``); ``ffprobe`` classifies it (empty, undecodable, no
video) — once per source: the fetch stage's probe travels in the ``probe`` column, and rows of one
file in a batch share one — the request becomes its clips (a span request is one clip; a whole
video is cut at scene changes by ``scenes.py``), and each clip costs one ffmpeg process that seeks
on the input, decodes the segment once and writes both the mp4 and the FLAC. The frames handed to
the captioners are then read by decord from the small re-encoded mp4, never from the source, and
only when a later stage consumes them (``frames``).

Spans are honest: a clip lasts exactly what its key names, and its key is the request's (resume
and ``claim_keys`` reserve span keys by the requested times), so a span must lie within the
source. One that starts after the source's end, or ends past it by more than ``end_slack_s``, is
``invalid_input`` before ffmpeg runs; within the slack (containers round their durations, and a
release's spans were measured on other copies of the video) the clip is padded to its keyed length.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np

from vast.pipeline.keys import clip_key
from vast.pipeline.scenes import SceneDetectionError, detect_cuts, plan_clips, stderr_tail
from vast.pipeline.scratch import scratch_dir
from vast.pipeline.stage import SampleError, Stage, fail


@dataclass
class MediaConfig:
    """How clips are cut, encoded and sampled."""

    max_height: int = 360
    """Clips are scaled down to at most this many pixel rows (aspect kept, even dimensions)."""
    fps: float | None = None
    """Frame-rate cap of the re-encoded clip; None keeps the source rate."""
    gop_s: float = 1.0
    """Keyframe interval in seconds: a short GOP keeps the trainer's random seeks cheap."""
    crf: int = 23
    """x264 constant rate factor (lower is better quality, bigger files)."""
    preset: str = "veryfast"
    """x264 preset: the encode dominates the stage's CPU time."""
    num_frames: int = 8
    """Frames sampled uniformly over each clip (segment middles) for the captioners."""
    frame_size: int = 224
    """Sampled frames are resized to frame_size x frame_size RGB."""
    audio_rate: int = 16000
    """Sample rate of the mono FLAC track."""
    min_clip_s: float = 5.0
    """Whole videos: shortest clip (shorter scenes are merged); a shorter video stays one clip."""
    max_clip_s: float = 30.0
    """Whole videos: longest clip (longer scenes are split evenly); at least 2 x min_clip_s."""
    scene_threshold: float = 0.3
    """ffmpeg ``scene`` score in [0, 1] above which two analysed frames are a scene cut."""
    threads: int = 1
    """ffmpeg/decord threads per clip: one, so that parallel tasks (one per core) scale."""
    timeout_s: float = 600.0
    """Wall-clock limit of each ffmpeg/ffprobe process (scene detection of a long video included)."""
    split_scenes: bool = True
    """Whole videos are cut at scene changes; False keeps each whole (labelling a folder of clips)."""
    audio_only: bool = False
    """Accept sources without a video stream as audio-only clips (flac only, no mp4 or frames)."""
    still_s: float = 1.0
    """A still image becomes a clip of this many seconds (its frames all show the image)."""
    frames: bool | None = None
    """Decode ``num_frames`` frames per clip with decord. None: only when a later stage of the graph
    consumes them (a captioner); a clip's duration and rate then come from its mp4 header."""
    end_slack_s: float = 0.1
    """How far a span may end past the source's end (seconds) and still be cut: the clip is padded to
    its keyed length (last frame held, audio silence). Further past the end it fails as ``invalid_input``."""
    work_dir: str | None = None
    """Where the per-request temporary folders go; an ingest run puts its run folder here (see the fetch
    stage's ``work_dir``); None: the system temp dir."""


class MediaCutter(Stage):
    """Cuts each fetched request into clips and encodes them; see the module docstring.

    Adds ``mp4`` (bytes), ``flac`` (bytes, b"" when the clip has no audio), ``frames`` (uint8
    ``(num_frames, frame_size, frame_size, 3)``) and ``clip_info`` (JSON str). A request that
    cannot be used at all (empty, undecodable, no video, span outside the media) raises
    ``SampleError``; a clip that fails to encode becomes a failed row of its own clip key, so
    the other clips of the video survive.
    """

    name = "media"
    Config = MediaConfig
    drops = ("media", "media_offset", "media_path", "probe")

    def __init__(self, config: MediaConfig | None = None):
        super().__init__(config)
        c: MediaConfig = self.config
        if c.max_clip_s < 2 * c.min_clip_s:
            raise ValueError(f"max_clip_s ({c.max_clip_s}) must be at least twice "
                             f"min_clip_s ({c.min_clip_s})")
        if c.num_frames < 1 or c.frame_size < 1 or c.max_height < 2:
            raise ValueError("num_frames and frame_size must be ≥ 1 and max_height ≥ 2")
        if not c.end_slack_s >= 0:
            raise ValueError(f"end_slack_s must be ≥ 0, got {c.end_slack_s}")
        s = c.frame_size
        self.output_defaults = {"mp4": b"", "flac": b"", "frames": np.zeros((0, s, s, 3), np.uint8),
                                "clip_info": "{}"}
        self._probes: dict[str, dict[str, Any] | SampleError] = {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        # rows of one source in a batch (spans fetched by one download) share one probe
        self._probes = {}
        try:
            return super().__call__(batch)
        finally:
            self._probes = {}

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """One fetched request → its clip rows (clips in ``skip_keys`` not cut: ``duplicate`` rows)."""
        offset = float(row.get("media_offset") or 0.0)
        skip = set(row["skip_keys"]) if row.get("skip_keys") is not None else set()
        with tempfile.TemporaryDirectory(prefix="vast-media-", dir=scratch_dir(self.config.work_dir)) as tmp:
            local = row.get("media_path")
            if isinstance(local, str) and local:
                src = Path(local)  # fetched into this worker: read in place, never copied
                if not src.stat().st_size:
                    raise SampleError("empty_media", "the fetched media is 0 bytes")
            else:
                data = row.get("media")
                if not data:
                    raise SampleError("empty_media", "the fetched media is 0 bytes")
                src = Path(tmp) / f"source{_suffix(row.get('source', ''))}"
                src.write_bytes(data)
            probe = self._probe_once(src, row.get("probe"), shared=isinstance(local, str) and bool(local))
            duration = probe["duration"]
            if (row["start"] is None or math.isnan(row["start"])) and not self.config.split_scenes:
                spans = [(0.0, duration, offset, round(offset + duration, 3))]
            elif row["start"] is None or math.isnan(row["start"]):
                spans = self._scene_clips(src, probe, row)
            else:
                spans = [self._span(row, offset, probe)]
            out = []
            for rel_start, rel_end, abs_start, abs_end in spans:
                key = clip_key(row["video_id"], abs_start, abs_end)
                clip_row = {**row, "key": key, "start": abs_start, "end": abs_end, "n_clips": len(spans)}
                if key in skip:  # settled, or another request's: a row still, so the request counts it
                    out.append({**clip_row, "status": "duplicate", "stage": self.name})
                    continue
                try:
                    out.append({**clip_row, **self._cut(src, Path(tmp), rel_start, rel_end, probe, offset)})
                except SampleError as e:
                    out.append(fail(clip_row, e.error_class, e.message, self.name))
            return out

    # -- request level -------------------------------------------------------------------------

    def _probe_once(self, src: Path, fetched: Any, shared: bool) -> dict[str, Any]:
        """The source's probe facts: from the fetch stage's ffprobe when it ran one, else ffprobe now;
        a ``shared`` file's are remembered for the other rows of this batch that read it."""
        key = str(src) if shared else ""
        if key in self._probes:
            found = self._probes[key]
            if isinstance(found, SampleError):
                raise SampleError(found.error_class, found.message)
            return found
        try:
            if isinstance(fetched, str) and fetched:
                facts = self._probe_facts(json.loads(fetched))
            else:
                facts = self._probe(src)
        except SampleError as e:
            if key:
                self._probes[key] = e
            raise
        if key:
            self._probes[key] = facts
        return facts

    def _probe(self, src: Path) -> dict[str, Any]:
        """ffprobe facts of the source, or the SampleError that classifies it."""
        info, stderr = ffprobe(src, self.config.timeout_s)
        if info is None:
            raise SampleError("decode_error", stderr)
        return self._probe_facts(info)

    def _probe_facts(self, info: dict[str, Any]) -> dict[str, Any]:
        """The facts clips need from ffprobe's JSON (``-show_format -show_streams``), classified."""
        streams = info.get("streams", [])
        fmt = info.get("format", {})
        if not streams:
            raise SampleError("decode_error", f"no streams found (format {fmt.get('format_name', '?')})")
        # Cover art in audio files is a one-picture "video" stream: not a video.
        video = [s for s in streams if s.get("codec_type") == "video"
                 and not s.get("disposition", {}).get("attached_pic")]
        audio = [s for s in streams if s.get("codec_type") == "audio"]
        kinds = ", ".join(sorted({s.get("codec_type", "?") for s in streams}))
        if not video and not audio:
            # neither pictures nor sound: not a media file (random bytes pass for a text subtitle)
            raise SampleError("decode_error", f"no video or audio stream: read as "
                                              f"{fmt.get('format_name', '?')} with streams: {kinds}")
        if not video:
            if self.config.audio_only:
                return _audio_probe(audio[0], fmt)
            raise SampleError("no_video_stream", f"streams: {kinds}")
        v = video[0]
        still = fmt.get("format_name") == "image2" or str(fmt.get("format_name", "")).endswith("_pipe")
        # The video stream's extent is what clips can show (an audio track may run longer);
        # containers such as webm/mkv only state the format's duration.
        duration = self.config.still_s if still else _float(v.get("duration")) or _float(fmt.get("duration"))
        if not duration or duration <= 0:
            raise SampleError("empty_media", f"duration is {fmt.get('duration')!r}")
        width, height = int(v.get("width") or 0), int(v.get("height") or 0)
        if not width or not height:
            raise SampleError("decode_error", f"video stream {v.get('codec_name')} has no frame size")
        if _rotation(v) % 180 == 90:  # ffmpeg autorotates: the filters see the displayed shape
            width, height = height, width
        return {
            "duration": duration,
            "format": fmt.get("format_name"),
            "still": still,
            "video_index": int(v["index"]),
            "video_codec": v.get("codec_name"),
            "width": width,
            "height": height,
            "fps": _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate")),
            "audio_codec": audio[0].get("codec_name") if audio else None,
            "audio_rate": int(audio[0].get("sample_rate") or 0) if audio else None,
            "audio_channels": audio[0].get("channels") if audio else None,
            # what a clip can hold at most: the audio track may outlast the pictures
            "extent": max(duration, (not still and audio and _float(audio[0].get("duration"))) or 0.0),
        }

    def _span(self, row: dict[str, Any], offset: float,
              probe: dict[str, Any]) -> tuple[float, float, float, float]:
        """A span request: (start, end) in the media file and in the source, or ``invalid_input`` when the
        span is not within the media (see the module docstring; ``end_slack_s``)."""
        start, end, duration = float(row["start"]), float(row["end"]), probe["duration"]
        # the source time the media ends at (a section download ends where the source or the section does)
        media_end = offset + probe.get("extent", duration)
        where = (f"the source's section downloaded from {offset:g} s ends at {media_end:g} s" if offset
                 else f"the source ends at {media_end:g} s")
        if not probe["still"]:  # a still image lasts as long as it is shown
            if start >= media_end:
                raise SampleError("invalid_input", f"span {start:g}-{end:g} s starts after the end of the "
                                                   f"source ({where})")
            if end > media_end + self.config.end_slack_s:
                # The key names the requested times (resume and claim_keys reserve them): a clip cut short
                # would claim media that is not there, and one renamed to the real end would escape them.
                raise SampleError("invalid_input", f"span {start:g}-{end:g} s runs {end - media_end:.3f} s "
                                                   f"past the end of the source ({where}; end_slack_s="
                                                   f"{self.config.end_slack_s:g})")
        rel_start, rel_end = max(0.0, start - offset), end - offset
        # Less than one frame of video in the span would give an mp4 without pictures.
        if min(rel_end, duration) - rel_start < 1 / (probe["fps"] or 25.0):
            raise SampleError("invalid_input", f"span {start:g}-{end:g} s holds no video frame of the media "
                                               f"(source {offset:g}-{offset + duration:g} s)")
        # Not clamped to the media: within the slack, _cut pads the clip to its keyed length (the last
        # frame held, the audio padded with silence).
        return rel_start, rel_end, start, end

    def _scene_clips(self, src: Path, probe: dict[str, Any],
                     row: dict[str, Any]) -> list[tuple[float, float, float, float]]:
        """A whole-video request: clips at scene changes, in the file and in the source."""
        c: MediaConfig = self.config
        try:
            # audio alone has no scenes: it is split evenly by the clip lengths
            cuts = [] if probe["video_index"] is None else \
                detect_cuts(src, c.scene_threshold, threads=c.threads, timeout_s=c.timeout_s)
        except SceneDetectionError as e:
            raise SampleError("decode_error", e.stderr) from None
        except subprocess.TimeoutExpired:
            raise SampleError("decode_error", f"scene detection timed out after {c.timeout_s:g} s") from None
        offset = float(row.get("media_offset") or 0.0)
        return [(a, b, round(a + offset, 3), round(b + offset, 3))
                for a, b in plan_clips(probe["duration"], cuts, c.min_clip_s, c.max_clip_s)]

    # -- clip level ----------------------------------------------------------------------------

    def _cut(self, src: Path, tmp: Path, start: float, end: float, probe: dict[str, Any],
             offset: float) -> dict[str, Any]:
        """Encode one clip ([start, end] s of the media file) → mp4, flac, frames, clip_info.

        Both outputs last exactly the span the clip's key names: the mp4 holds
        round(duration × fps) frames at a constant rate, the flac round(duration × audio_rate)
        samples (``exact_length``).
        """
        c: MediaConfig = self.config
        mp4, flac = tmp / "clip.mp4", tmp / "clip.flac"
        for stale in (mp4, flac):  # the previous clip's outputs must never be read for this one
            stale.unlink(missing_ok=True)
        if probe["video_index"] is None:
            return self._cut_audio(src, flac, start, end, probe, offset)
        duration = _keyed_duration(start + offset, end + offset)
        src_fps = probe["fps"] or 25.0
        out_fps = min(src_fps, c.fps) if c.fps else src_fps
        rate = Fraction(out_fps).limit_denominator(1001)  # 29.97002997… → 30000/1001, exactly
        n_frames = max(1, round(duration * out_fps))
        height = min(c.max_height, probe["height"]) // 2 * 2
        # Same rounding as ffmpeg's scale=-2 (av_rescale rounds to nearest, then ×2).
        ih = probe["height"] or 1
        width = (height * probe["width"] + ih) // (2 * ih) * 2
        # A constant rate (fps) so the frame count fixes the length; the last frame is repeated
        # (tpad) where the source stops a frame short of the span, and -frames:v ends the clip.
        vf = [f"fps={rate}", f"scale=-2:{height}", "tpad=stop=-1:stop_mode=clone"]
        threads = str(c.threads)
        args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-threads", threads,
                # -ss/-t before -i: seek on the input (jump to the keyframe before the start,
                # decode only the segment), and limit both outputs at once.
                *(["-loop", "1", "-t", f"{end - start:.3f}"] if probe["still"] else
                  ["-ss", f"{start:.3f}", "-t", f"{end - start:.3f}"]),
                "-i", str(src), "-filter_threads", threads,
                "-map", f"0:{probe['video_index']}", "-vf", ",".join(vf), "-frames:v", str(n_frames),
                "-c:v", "libx264", "-preset", c.preset, "-crf", str(c.crf), "-pix_fmt", "yuv420p",
                "-g", str(max(1, round(c.gop_s * out_fps))), "-threads", threads,
                "-movflags", "+faststart", "-map_metadata", "-1", str(mp4)]
        has_audio = probe["audio_codec"] is not None
        n_samples = round(duration * c.audio_rate)
        if has_audio:
            args += ["-map", "0:a:0", "-af", exact_length(c.audio_rate, n_samples), "-ac", "1",
                     "-ar", str(c.audio_rate), "-c:a", "flac", "-map_metadata", "-1", str(flac)]
        proc = self._run(args)
        if proc.returncode != 0:
            raise SampleError("decode_error", stderr_tail(proc.stderr) or f"ffmpeg exited {proc.returncode}")

        if not mp4.exists() or (has_audio and not flac.exists()):
            raise SampleError("decode_error", f"ffmpeg wrote no output: {stderr_tail(proc.stderr)}")
        mp4_bytes = mp4.read_bytes()
        flac_bytes, audio_missing, audio_s = b"", "no audio stream", None
        if has_audio:
            flac_bytes = flac.read_bytes()
            samples = _flac_samples(flac_bytes)
            audio_s = samples / c.audio_rate if samples else 0.0
            audio_missing = None if samples else "audio stream has no samples in this clip"
            if not samples:
                flac_bytes = b""
            elif samples < n_samples:  # the source's audio stops inside the clip
                flac_bytes = self._pad_audio(flac, n_samples)
        if c.frames is False:
            s = c.frame_size
            frames, frame_times = np.zeros((0, s, s, 3), np.uint8), []
            n_frames, fps = mp4_frames(mp4_bytes)
        else:
            frames, frame_times, n_frames, fps = read_frames(mp4, c.num_frames, c.frame_size, c.threads)
        info = {
            "duration": duration,
            "fps": round(fps, 3),
            "width": width,
            "height": height,
            "video_codec": "h264",
            "gop_frames": max(1, round(c.gop_s * out_fps)),
            "has_audio": bool(flac_bytes),
            "audio_missing": audio_missing,
            "audio_rate": c.audio_rate if flac_bytes else None,
            "audio_duration": round(audio_s, 3) if audio_s else None,
            "num_frames": n_frames,
            "frame_times": [round(t, 3) for t in frame_times],
            "source": {k: probe[k] for k in ("duration", "format", "video_codec", "width", "height", "fps",
                                             "audio_codec", "audio_rate", "audio_channels")}
            | {"media_offset": offset, "clip_start_in_media": round(start, 3)},
        }
        return {"mp4": mp4_bytes, "flac": flac_bytes, "frames": frames, "clip_info": json.dumps(info)}

    def _cut_audio(self, src: Path, flac: Path, start: float, end: float, probe: dict[str, Any],
                   offset: float) -> dict[str, Any]:
        """An audio-only clip: the FLAC alone (no mp4, no frames)."""
        c: MediaConfig = self.config
        duration = _keyed_duration(start + offset, end + offset)
        args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-ss", f"{start:.3f}",
                "-t", f"{end - start:.3f}", "-i", str(src), "-map", "0:a:0",
                "-af", exact_length(c.audio_rate, round(duration * c.audio_rate)), "-ac", "1",
                "-ar", str(c.audio_rate), "-c:a", "flac", "-map_metadata", "-1", str(flac)]
        proc = self._run(args)
        if proc.returncode != 0 or not flac.exists():
            raise SampleError("decode_error", stderr_tail(proc.stderr) or f"ffmpeg exited {proc.returncode}")
        flac_bytes = flac.read_bytes()
        samples = _flac_samples(flac_bytes)
        if not samples:
            raise SampleError("empty_media", "the audio clip has no samples")
        if samples < round(duration * c.audio_rate):
            flac_bytes = self._pad_audio(flac, round(duration * c.audio_rate))
        info = {"duration": duration, "fps": None, "width": 0, "height": 0,
                "video_codec": None, "has_audio": True, "audio_missing": None, "audio_rate": c.audio_rate,
                "audio_duration": round(samples / c.audio_rate, 3), "frame_times": [], "num_frames": 0,
                "source": {k: probe[k] for k in ("duration", "format", "audio_codec", "audio_rate",
                                                 "audio_channels")} | {"media_offset": offset}}
        s = c.frame_size
        return {"mp4": b"", "flac": flac_bytes, "frames": np.zeros((0, s, s, 3), np.uint8),
                "clip_info": json.dumps(info)}

    def _pad_audio(self, flac: Path, samples: int) -> bytes:
        """The FLAC ``flac`` padded with silence to ``samples`` samples (its source audio ended early)."""
        padded = flac.with_suffix(".padded.flac")
        proc = self._run(["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", str(flac),
                          "-af", f"apad=whole_len={samples}", "-c:a", "flac", "-map_metadata", "-1",
                          str(padded)])
        if proc.returncode != 0 or not padded.exists():
            raise SampleError("decode_error", stderr_tail(proc.stderr) or f"ffmpeg exited {proc.returncode}")
        return padded.read_bytes()

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(args, capture_output=True, timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            raise SampleError("decode_error",
                              f"{args[0]} timed out after {self.config.timeout_s:g} s") from None


def exact_length(rate: int, samples: int) -> str:
    """ffmpeg audio filters that resample to ``rate`` and stop after ``samples`` samples.

    Resampling comes first so the count is at the output rate. A source whose audio stops early
    gives fewer samples; ``_pad_audio`` then pads the clip with silence (ffmpeg's ``apad`` would
    pad here too, but would also turn a clip the audio track never reaches into silence).
    """
    return f"aresample={rate},atrim=end_sample={samples}"


def _keyed_duration(start: float, end: float) -> float:
    """The length of the clip [start, end] s of the source as its key states it: whole milliseconds,
    rounded as ``clip_key`` rounds them."""
    return (round(end * 1000) - round(start * 1000)) / 1000


def ffprobe(path: str | Path, timeout_s: float = 600.0,
            input_options: list[str] | None = None) -> tuple[dict[str, Any] | None, str]:
    """ffprobe's JSON (format and streams) of a media file or URL, or (None, why it could not be read).

    The one probe of a source: the fetch stage runs it when it needs the duration and hands the JSON
    on to the media stage (``probe`` column), which otherwise runs it itself. ``input_options`` go
    before the input (e.g. ``-rw_timeout`` for a URL).
    """
    args = ["ffprobe", "-v", "error", *(input_options or []), "-print_format", "json", "-show_format",
            "-show_streams", str(path)]
    try:
        proc = subprocess.run(args, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"ffprobe timed out after {timeout_s:g} s"
    if proc.returncode != 0:
        return None, stderr_tail(proc.stderr) or f"ffprobe exited {proc.returncode}"
    try:
        return json.loads(proc.stdout or b"{}"), ""
    except json.JSONDecodeError as e:
        return None, f"ffprobe printed no JSON: {e}"


def mp4_frames(data: bytes) -> tuple[int, float]:
    """(frame count, frames per second) of an mp4's first video track, read from its header boxes.

    What decord would report for the clip, without decoding it: ``stsz``'s sample count over
    ``mdhd``'s duration. Raises ``SampleError("decode_error")`` when the boxes are missing.
    """
    def boxes(buf: memoryview) -> Any:
        i = 0
        while i + 8 <= len(buf):
            size, kind = int.from_bytes(buf[i:i + 4], "big"), bytes(buf[i + 4:i + 8])
            head = 8
            if size == 1:
                size, head = int.from_bytes(buf[i + 8:i + 16], "big"), 16
            elif size == 0:
                size = len(buf) - i
            if size < head:
                return
            yield kind, buf[i + head:i + size]
            i += size

    def child(buf: memoryview, *path: bytes) -> memoryview | None:
        for kind, body in boxes(buf):
            if kind == path[0]:
                return body if len(path) == 1 else child(body, *path[1:])
        return None

    view = memoryview(data)
    for kind, trak in boxes(child(view, b"moov") or memoryview(b"")):
        if kind != b"trak":
            continue
        hdlr, mdhd = child(trak, b"mdia", b"hdlr"), child(trak, b"mdia", b"mdhd")
        stsz = child(trak, b"mdia", b"minf", b"stbl", b"stsz")
        if hdlr is None or bytes(hdlr[8:12]) != b"vide" or mdhd is None or stsz is None:
            continue
        if mdhd[0] == 1:  # version 1: 64-bit times
            scale, length = int.from_bytes(mdhd[20:24], "big"), int.from_bytes(mdhd[24:32], "big")
        else:
            scale, length = int.from_bytes(mdhd[12:16], "big"), int.from_bytes(mdhd[16:20], "big")
        count = int.from_bytes(stsz[8:12], "big")
        if scale and length and count:
            return count, count / (length / scale)
    raise SampleError("decode_error", "the clip's mp4 has no video track with frames")


def _audio_probe(stream: dict[str, Any], fmt: dict[str, Any]) -> dict[str, Any]:
    """Probe facts of an audio-only source (``video_index`` None)."""
    duration = _float(stream.get("duration")) or _float(fmt.get("duration"))
    if not duration or duration <= 0:
        raise SampleError("empty_media", f"duration is {fmt.get('duration')!r}")
    return {"duration": duration, "format": fmt.get("format_name"), "still": False, "video_index": None,
            "video_codec": None, "width": 0, "height": 0, "fps": None,
            "audio_codec": stream.get("codec_name"), "audio_rate": int(stream.get("sample_rate") or 0),
            "audio_channels": stream.get("channels")}


def read_frames(mp4: str | Path, num_frames: int, size: int, threads: int = 1
                ) -> tuple[np.ndarray, list[float], int, float]:
    """``num_frames`` frames at the middles of equal segments of a clip, resized to size×size by decord.

    Returns (frames (num_frames, size, size, 3) uint8, their times in seconds, frame count, fps);
    an undecodable clip raises ``SampleError("decode_error", ...)``.
    """
    import decord  # here, not at the top: building the graph imports this module without decoding

    try:
        vr = decord.VideoReader(str(mp4), ctx=decord.cpu(0), width=size, height=size, num_threads=threads)
        n = len(vr)
        if n == 0:
            raise SampleError("decode_error", "the clip has no video frames")
        idx = [min(n - 1, int((i + 0.5) * n / num_frames)) for i in range(num_frames)]
        frames = vr.get_batch(idx).asnumpy()  # (num_frames, S, S, 3) uint8
        times = vr.get_frame_timestamp(idx)[:, 0].tolist()
        fps = float(vr.get_avg_fps())
    except decord.DECORDError as e:
        raise SampleError("decode_error", f"decord: {str(e)[-500:]}") from None
    return np.ascontiguousarray(frames, dtype=np.uint8), times, n, fps


def _suffix(source: str) -> str:
    """The source's file extension when it has a plausible one (helps ffmpeg probe raw streams)."""
    suffix = PurePosixPath(urlparse(str(source)).path).suffix.lower()
    return suffix if 1 < len(suffix) <= 6 and suffix[1:].isalnum() else ".media"


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _rate(text: str | None) -> float | None:
    """``"30000/1001"`` → 29.97; ``"0/0"`` or missing → None."""
    try:
        num, den = (text or "").split("/")
        return float(num) / float(den) if float(den) and float(num) else None
    except ValueError:
        return None


def _rotation(stream: dict[str, Any]) -> int:
    """Display rotation in degrees (side data in ffmpeg ≥ 5, the ``rotate`` tag before)."""
    for side in stream.get("side_data_list", []):
        if "rotation" in side:
            return int(side["rotation"]) % 360
    return int(_float(stream.get("tags", {}).get("rotate")) or 0) % 360


def _flac_samples(data: bytes) -> int:
    """Total samples from a FLAC STREAMINFO block (the first metadata block, right after ``fLaC``)."""
    if len(data) < 26 or data[:4] != b"fLaC":
        return 0
    # STREAMINFO body starts at byte 8; bytes 10..17 pack rate(20) channels(3) bps(5) samples(36).
    packed = int.from_bytes(data[18:26], "big")
    return packed & ((1 << 36) - 1)
