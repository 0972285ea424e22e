"""Sample media made with ffmpeg (and espeak-ng for speech): for the demo and the tests.

Nothing is downloaded: ``testsrc2``/``mandelbrot`` pictures, sine tones and synthetic speech.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True)


def make_video(path: Path, seconds: float = 6.0, audio: str | None = "tone", size: str = "320x240",
               fps: int = 25, scene_every: float | None = None) -> Path:
    """An mp4 (H.264, faststart) of ``testsrc2``; ``audio``: "tone", "speech" or None.

    ``scene_every`` alternates two very different sources every N seconds to give the scene
    detector real cuts.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["ffmpeg", "-y", "-v", "error"]
    if scene_every:
        n = max(1, int(seconds // scene_every))
        pieces = [f"testsrc2=s={size}:r={fps}:d={scene_every}" if i % 2 == 0
                  else f"mandelbrot=s={size}:r={fps},trim=duration={scene_every}" for i in range(n)]
        graph = ";".join(f"{p},setpts=PTS-STARTPTS,format=yuv420p[v{i}]" for i, p in enumerate(pieces))
        graph += ";" + "".join(f"[v{i}]" for i in range(n)) + f"concat=n={n}:v=1:a=0[v]"
        args += ["-filter_complex", graph]
        video_map = ["-map", "[v]"]
    else:
        args += ["-f", "lavfi", "-i", f"testsrc2=s={size}:r={fps}:d={seconds}"]
        video_map = ["-map", "0:v"]
    audio_map: list[str] = []
    if audio == "tone":
        # two alternating tones: music-like, no speech
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}:beep_factor=2"]
        audio_map = ["-map", f"{1 if not scene_every else 0}:a"]
    elif audio == "speech":
        wav = path.with_suffix(".speech.wav")
        _run(["espeak-ng", "-w", str(wav), "This is a test of the video pipeline. " * 3])
        args += ["-i", str(wav)]
        audio_map = ["-map", f"{1 if not scene_every else 0}:a", "-af", "apad", "-t", str(seconds)]
    args += video_map + audio_map + ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                                     "-g", str(fps), "-movflags", "+faststart"]
    if audio:
        args += ["-c:a", "aac", "-ar", "44100", "-ac", "2"]
    _run(args + [str(path)])
    return path


def make_corrupt(path: Path) -> Path:
    """A file named .mp4 whose bytes are not a video."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return path


def make_audio_only(path: Path, seconds: float = 4.0) -> Path:
    """An m4a with a tone and no video stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", f"sine=frequency=330:duration={seconds}",
          "-c:a", "aac", str(path)])
    return path


def write_sample(directory: str | Path, videos: int = 4) -> Path:
    """Write sample videos and an ``ids.txt`` using every local line form; returns the ids file."""
    root = Path(directory)
    media = root / "media"
    kinds = ["speech", "tone", None]
    lines = ["# vast-pipeline sample: SOURCE [START END], seconds or [HH:]MM:SS.mmm",
             "# a YouTube id or URL works the same way, e.g.: dQw4w9WgXcQ 00:00:10 00:00:20"]
    for i in range(videos):
        audio = kinds[i % len(kinds)]
        path = make_video(media / f"clip{i}_{audio or 'silent'}.mp4", seconds=8.0 + i, audio=audio)
        if i % 2 == 0:
            lines.append(f"media/{path.name} 1.0 7.5")
        else:
            lines.append(f"file://{path.resolve()} 00:00:01.5 00:00:08")
    long = make_video(media / "scenes.mp4", seconds=36.0, audio="tone", scene_every=6.0)
    lines.append(f"media/{long.name}  # no span: cut into 5-30 s clips at scene changes")
    ids = root / "ids.txt"
    ids.write_text("\n".join(lines) + "\n")
    return ids
