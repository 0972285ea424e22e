"""The sample schema (DESIGN.md "A sample in a shard"), its parquet manifest row and its HF features.

The member contract: every sample of every output carries the same four members, so any
WebDataset client, schema-inferring ones included, sees one shape:

- ``mp4``: the clip. An item without pictures (an audio file) carries a black placeholder of
  its length; ``json.has_video`` is false and ``json.video_missing`` says why.
- ``flac``: 16 kHz mono audio. A clip without audio carries digital silence of its length;
  ``json.has_audio`` is false and ``json.audio_missing`` says why.
- ``json``: every field of ``SAMPLE_FIELDS``, always present, each with one JSON type: missing
  values are typed empties (``""``, ``0``, ``[]``, ``{}``), never null.
- ``txt``: the omni-caption, ``""`` when there is none.

Both media members last exactly the span the key names (``duration``): round(duration × fps)
frames, round(duration × rate) samples. The manifest holds one row per sample: every json
field but media, free-form values as JSON text so all shards share one schema.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 2
AUDIO_RATE = 16000
"""Sample rate of the ``flac`` member (the media stage's default, and the placeholders')."""

# Annotation fields the captioner stages add (typed empties until a stage produces them).
ANNOTATION_FIELDS = ("vision_cap", "audio_cap", "subtitle", "subtitle_segments", "subtitle_language",
                     "vast_cap", "provenance")

# The json member, field → kind. "json" is free-form JSON (an object or list whose keys vary
# from sample to sample): kept as it is in the member, declared as `datasets.Json` in the card.
SAMPLE_FIELDS: dict[str, str] = {
    "schema": "int", "key": "str", "video_id": "str", "request": "str", "input": "str", "url": "str",
    "span": "list[float]", "duration": "float",
    "has_video": "bool", "video_missing": "str", "fps": "float", "width": "int", "height": "int",
    "num_frames": "int", "frame_times": "list[float]",
    "has_audio": "bool", "audio_missing": "str",
    "meta": "json", "source_info": "json",
    "vision_cap": "list[str]", "audio_cap": "list[str]", "subtitle": "str", "subtitle_segments": "json",
    "subtitle_language": "str", "vast_cap": "str", "provenance": "json",
}
_EMPTY: dict[str, Any] = {"int": 0, "float": 0.0, "bool": False, "str": "",
                          "list[str]": [], "list[float]": []}
_JSON_EMPTY = {"meta": {}, "source_info": {}, "provenance": {}, "subtitle_segments": []}

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("video_id", pa.string()), ("request", pa.string()), ("input", pa.string()),
    ("url", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("duration", pa.float64()),
    ("fps", pa.float64()), ("width", pa.int32()), ("height", pa.int32()), ("has_audio", pa.bool_()),
    ("audio_missing", pa.string()), ("num_frames", pa.int32()),
    ("vision_cap", pa.list_(pa.string())), ("audio_cap", pa.list_(pa.string())),
    ("subtitle", pa.string()), ("subtitle_language", pa.string()), ("vast_cap", pa.string()),
    ("subtitle_segments", pa.string()), ("provenance", pa.string()), ("meta", pa.string()),
    ("source_info", pa.string()), ("shard", pa.string()), ("mp4_bytes", pa.int64()),
    ("flac_bytes", pa.int64()), ("has_video", pa.bool_()), ("video_missing", pa.string()),
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
    return json.loads(text) if isinstance(text, (str, bytes)) and text else None


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sample_json(row: dict[str, Any]) -> dict[str, Any]:
    """The ``json`` member of a sample, from a row that went through the media stage (every field typed)."""
    info = _loads(row.get("clip_info")) or {}
    start, end = float(row["start"]), float(row["end"])
    has_video, has_audio = bool(row.get("mp4")), bool(row.get("flac"))
    frames = row.get("frames")
    values: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "key": row["key"],
        "video_id": row["video_id"],
        "request": row["request"],
        "input": row["input"],
        "url": row["source"],
        "span": [start, end],
        "duration": info.get("duration", end - start),
        "has_video": has_video,
        "video_missing": "" if has_video else "no video stream (an audio-only source)",
        "fps": info.get("fps") if has_video else 0.0,
        "width": info.get("width"),
        "height": info.get("height"),
        "num_frames": info.get("num_frames", len(frames) if frames is not None else 0),
        "frame_times": info.get("frame_times"),
        "has_audio": has_audio,
        "audio_missing": "" if has_audio else (info.get("audio_missing") or "no audio stream"),
        "meta": _loads(row.get("meta")),
        "source_info": _loads(row.get("source_info")),
    }
    for name in ANNOTATION_FIELDS:
        value = row.get(name)
        values[name] = None if _absent(value) else _loads(value) if SAMPLE_FIELDS[name] == "json" else value
    return {name: typed(name, values[name]) for name in SAMPLE_FIELDS}


def typed(name: str, value: Any) -> Any:
    """``value`` as field ``name``'s kind; the kind's empty value when it is missing."""
    kind = SAMPLE_FIELDS[name]
    if _absent(value):
        return _JSON_EMPTY[name] if kind == "json" else _EMPTY[kind]
    if hasattr(value, "tolist"):  # numpy arrays and scalars from a Ray batch
        value = value.tolist()
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value) if math.isfinite(float(value)) else 0.0
    if kind == "bool":
        return bool(value)
    if kind == "str":
        return str(value)
    if kind == "list[str]":
        return [value] if isinstance(value, str) else [str(v) for v in value]
    if kind == "list[float]":  # NaN has no JSON form: null inside the list
        return [None if _absent(v) or not math.isfinite(float(v)) else float(v) for v in value]
    return _plain(value)


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy values to Python, NaN to null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_bytes(sample: dict[str, Any]) -> bytes:
    """The ``json`` member's bytes (strict JSON, UTF-8)."""
    return json.dumps(sample, ensure_ascii=False, allow_nan=False).encode()


def manifest_row(sample: dict[str, Any], shard: str, mp4_bytes: int, flac_bytes: int) -> dict[str, Any]:
    """One manifest row for a sample's json (free-form values as JSON text)."""
    row = {name: sample[name] for name in MANIFEST_SCHEMA.names if name in sample}
    for name, kind in SAMPLE_FIELDS.items():
        if kind == "json" and name in row:
            row[name] = json.dumps(sample[name], ensure_ascii=False)
    start, end = sample["span"]
    return {**row, "start": start, "end": end, "shard": shard, "mp4_bytes": mp4_bytes,
            "flac_bytes": flac_bytes}


# Hugging Face `datasets` feature types of the members, as its dataset-card YAML spells them.
_HF_DTYPE = {"int": "int64", "float": "float64", "bool": "bool", "str": "string", "json": "json"}


def hf_features() -> list[dict[str, Any]]:
    """The samples' `datasets` features (the card's ``dataset_info.features``): what its WebDataset
    builder would infer from a sample, but declared, so no sample order can change a type."""
    fields = []
    for name, kind in SAMPLE_FIELDS.items():
        if kind.startswith("list["):
            fields.append({"name": name, "list": _HF_DTYPE[kind[5:-1]]})
        else:
            fields.append({"name": name, "dtype": _HF_DTYPE[kind]})
    return [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
            {"name": "flac", "dtype": "audio"}, {"name": "json", "struct": fields},
            {"name": "mp4", "dtype": "video"}, {"name": "txt", "dtype": "string"}]
