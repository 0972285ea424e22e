"""The sample schema (DESIGN.md "A sample in a shard") and its parquet manifest row.

A sample is one WebDataset key with members ``mp4`` (the re-encoded clip), ``flac`` (16 kHz mono,
absent when the clip has no audio: ``json.audio_missing`` says why), ``json`` (everything
else) and ``txt`` (the omni-caption, only when one exists). The manifest holds one row per
sample: every json field but media, nested values as JSON text so all shards share one schema.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1

# Annotation fields the captioner stages add; absent until a stage produces them.
ANNOTATION_FIELDS = ("vision_cap", "audio_cap", "subtitle", "subtitle_segments", "subtitle_language",
                     "vast_cap", "provenance")

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("video_id", pa.string()), ("request", pa.string()), ("input", pa.string()),
    ("url", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("duration", pa.float64()),
    ("fps", pa.float64()), ("width", pa.int32()), ("height", pa.int32()), ("has_audio", pa.bool_()),
    ("audio_missing", pa.string()), ("num_frames", pa.int32()),
    ("vision_cap", pa.list_(pa.string())), ("audio_cap", pa.list_(pa.string())),
    ("subtitle", pa.string()), ("subtitle_language", pa.string()), ("vast_cap", pa.string()),
    ("subtitle_segments", pa.string()), ("provenance", pa.string()), ("meta", pa.string()),
    ("source_info", pa.string()), ("shard", pa.string()), ("mp4_bytes", pa.int64()),
    ("flac_bytes", pa.int64()),
])


def valid_text(text: str) -> str:
    """``text`` as valid Unicode (Arrow strings and JSON must be): bytes the OS gave us that are not
    UTF-8 (``surrogateescape``) become ``\\xNN`` escapes."""
    if text.isascii():
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _loads(text: Any) -> Any:
    if isinstance(text, (dict, list)):
        return text
    # null in Arrow arrives as None or NaN in a numpy batch
    return json.loads(text) if isinstance(text, (str, bytes)) and text else {}


def sample_json(row: dict[str, Any]) -> dict[str, Any]:
    """The ``json`` member of a sample, from a row that went through the media stage."""
    info = _loads(row.get("clip_info"))
    start, end = float(row["start"]), float(row["end"])
    sample: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "key": row["key"],
        "video_id": row["video_id"],
        "request": row["request"],
        "input": row["input"],
        "url": row["source"],
        "span": [start, end],
        "duration": info.get("duration", end - start),
        "fps": info.get("fps"),
        "width": info.get("width"),
        "height": info.get("height"),
        "has_audio": bool(row.get("flac")),
        "audio_missing": info.get("audio_missing"),
        "num_frames": info.get("num_frames", len(row["frames"]) if row.get("frames") is not None else 0),
        "frame_times": info.get("frame_times"),
        "meta": _loads(row.get("meta")),
        "source_info": _loads(row.get("source_info")),
    }
    for name in ANNOTATION_FIELDS:
        value = row.get(name)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            sample[name] = _loads(value) if name in ("provenance", "subtitle_segments") else value
    return sample


def manifest_row(sample: dict[str, Any], shard: str, mp4_bytes: int, flac_bytes: int) -> dict[str, Any]:
    """One manifest row for a sample's json (nested values as JSON text)."""
    dump = lambda v: None if v is None else json.dumps(v, ensure_ascii=False)  # noqa: E731
    return {
        "key": sample["key"], "video_id": sample["video_id"], "request": sample["request"],
        "input": sample["input"], "url": sample["url"], "start": sample["span"][0], "end": sample["span"][1],
        "duration": sample["duration"], "fps": sample["fps"], "width": sample["width"],
        "height": sample["height"], "has_audio": sample["has_audio"],
        "audio_missing": sample["audio_missing"],
        "num_frames": sample["num_frames"],
        "vision_cap": _as_list(sample.get("vision_cap")), "audio_cap": _as_list(sample.get("audio_cap")),
        "subtitle": sample.get("subtitle"), "subtitle_language": sample.get("subtitle_language"),
        "vast_cap": sample.get("vast_cap"), "subtitle_segments": dump(sample.get("subtitle_segments")),
        "provenance": dump(sample.get("provenance")), "meta": dump(sample["meta"]),
        "source_info": dump(sample["source_info"]), "shard": shard, "mp4_bytes": mp4_bytes,
        "flac_bytes": flac_bytes,
    }


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    return [str(v) for v in value]
