"""``label``: caption a folder of your own videos, images or audio files, as VAST's labelling does.

Upstream VAST labels a folder of media listed by a ``meta.json`` of ``[{"video_id": ...}]``
(a file its loader crashes on unless every entry also has ``desc``) and writes
``{video_id: [caption, ...]}``. Here the folder goes through the ingest graph with every file kept
whole as one clip (no scene cutting; audio files become audio-only clips, images one-second
stills), so you get committed shards like any ingest, plus ``labels.json`` in the upstream form:
vision captions for videos and images, audio captions for audio files.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from vast.config import ConfigError
from vast.pipeline.config import IngestConfig
from vast.pipeline.ingest import run_ingest_requests
from vast.pipeline.inputs import AUDIO_SUFFIXES, IMAGE_SUFFIXES, VIDEO_SUFFIXES, Requests
from vast.shards.store import OutputStore
from vast.shards.vast27m import manifest

LABELLED = frozenset(VIDEO_SUFFIXES + AUDIO_SUFFIXES + IMAGE_SUFFIXES)


def label_requests(folder: Path, meta: Path | None) -> Requests:
    """One whole-file request per media file (or per ``meta.json`` entry, in its order)."""
    files = {p.name: p for p in sorted(folder.iterdir()) if p.suffix.lower() in LABELLED}
    by_stem: dict[str, Path] = {}
    for p in files.values():
        by_stem.setdefault(p.stem, p)
    out = Requests()
    if meta is None:
        for path in files.values():
            out.add(str(path), str(path.resolve()), math.nan, math.nan, meta={"video_id": path.stem},
                    video_id=path.stem)
        return out
    try:
        entries = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{meta}: not valid JSON ({e})") from None
    if not isinstance(entries, list):
        raise ConfigError(f"{meta}: expected a list like [{{\"video_id\": ...}}], "
                          f"got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        where = f"{meta}:[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("video_id"), str):
            out.reject(where, f"an entry needs a string 'video_id', got {entry!r}"[:300])
            continue
        vid = entry["video_id"]
        path = files.get(vid) or by_stem.get(vid)
        if path is None:
            out.reject(where, f"no media file named {vid} or {vid}.* in {folder}")
            continue
        out.add(where, str(path.resolve()), math.nan, math.nan, meta=dict(entry), video_id=Path(vid).stem)
    return out


def label(folder: str, cfg: IngestConfig, meta: str | None = None) -> dict[str, Any]:
    """Caption every file of ``folder`` (or those ``meta`` lists) into ``cfg.output``; writes labels.json."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"not a folder: {folder}")
    meta_path = Path(meta) if meta else (root / "meta.json" if (root / "meta.json").exists() else None)
    reqs = label_requests(root, meta_path)
    stages = dict(cfg.stages)
    if "media" in stages:  # each file is one item: kept whole, audio and images accepted
        options = {**stages["media"].options, "split_scenes": False, "audio_only": True}
        stages["media"] = dataclasses.replace(stages["media"], options=options)
    run_cfg = dataclasses.replace(cfg, stages=stages)
    summary = run_ingest_requests(run_cfg, reqs)
    labels = write_labels(cfg.output)
    summary["labels"] = {"path": f"{cfg.output}/labels.json", "items": len(labels)}
    return summary


def write_labels(output: str) -> dict[str, list[str]]:
    """``{video_id: [captions]}`` from the committed samples (the upstream labelling output)."""
    labels: dict[str, list[str]] = {}
    table = manifest(output)
    if table.num_rows:
        for row in table.to_pylist():
            vid = json.loads(row["meta"] or "{}").get("video_id", row["video_id"])
            labels[vid] = row["vision_cap"] or row["audio_cap"] or []
    text = json.dumps(labels, ensure_ascii=False, indent=1) + "\n"
    OutputStore(output).write_bytes("labels.json", text.encode())
    return labels
