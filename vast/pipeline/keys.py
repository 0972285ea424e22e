"""Clip keys and time values: the identity contract of DESIGN.md ("Clip key").

A key is ``{video_id}_{start_ms}_{end_ms}`` over ``[A-Za-z0-9_-]`` only: WebDataset cuts a
sample key at its first dot, so anything else is replaced. The same input always gives the
same key, never one derived from a position in a file.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import PurePosixPath
from urllib.parse import parse_qs, urlparse

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_YOUTUBE_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com", "youtu.be"}


def sanitize(text: str) -> str:
    """Map any string to the key alphabet (runs of other characters become one ``-``)."""
    return _UNSAFE.sub("-", text).strip("-") or "x"


def clip_key(video_id: str, start_s: float, end_s: float) -> str:
    """``{video_id}_{start_ms}_{end_ms}`` with milliseconds rounded to the nearest integer."""
    return f"{sanitize(video_id)}_{round(start_s * 1000)}_{round(end_s * 1000)}"


def request_key(video_id: str, start_s: float, end_s: float) -> str:
    """A span request is its clip; a whole-video request is keyed by its video id alone."""
    if math.isnan(start_s):
        return sanitize(video_id)
    return clip_key(video_id, start_s, end_s)


def youtube_id(url: str) -> str | None:
    """The video id of a YouTube watch/short/youtu.be URL, else None."""
    u = urlparse(url)
    host = (u.hostname or "").lower()
    if host not in _YOUTUBE_HOSTS:
        return None
    if host == "youtu.be":
        vid = u.path.lstrip("/").split("/")[0]
    elif u.path.startswith(("/shorts/", "/embed/", "/live/")):
        vid = u.path.split("/")[2]
    else:
        vid = (parse_qs(u.query).get("v") or [""])[0]
    return vid if YOUTUBE_ID.match(vid) else None


def video_id_for(source: str) -> str:
    """A stable id for a URL or path: the YouTube id, else ``{stem}-{hash8 of the source}``."""
    yt = youtube_id(source)
    if yt:
        return yt
    stem = PurePosixPath(urlparse(source).path).stem or "video"
    # surrogateescape: a path the OS gave us as bytes that are not UTF-8 hashes as those bytes
    digest = hashlib.sha1(source.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{sanitize(stem)[:48]}-{digest}"


_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")


def parse_time(text: str) -> float:
    """Seconds from ``12.5``, ``MM:SS(.mmm)`` or ``HH:MM:SS(.mmm)``; ValueError otherwise."""
    text = text.strip()
    m = _CLOCK.match(text)
    if m:
        h, mnt, s = m.groups()
        mnt_i, sec = int(mnt), float(s)
        if mnt_i >= 60 or sec >= 60:
            raise ValueError(f"bad clock time {text!r}")
        return int(h or 0) * 3600 + mnt_i * 60 + sec
    value = float(text)  # raises ValueError with the text in it
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"time must be a finite number of seconds ≥ 0, got {text!r}")
    return value
