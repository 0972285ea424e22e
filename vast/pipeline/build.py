"""``shards build``: pack a downstream set (upstream-style annotation JSON + a media folder) into shards.

Upstream downstream sets (MSRVTT, VATEX, ...) come as a JSON list of records: retrieval and
captioning ``{"video_id", "desc" | "caption"}`` (a string or a list), QA ``{"video_id", "question",
"answer"}``. Records of one video are merged into one sample: captions into one ``desc`` list,
question/answer pairs into ``qa`` (the first pair also as ``question``/``answer``). Each video
becomes one clip spanning the whole file (``start``/``end`` in a record cut a span instead), run
through the ingest pipeline itself (local fetch -> media stage -> shard writer, ledger, resume),
so the shards have exactly the ingest schema; the annotation fields land in the sample json's
``meta``, where :mod:`vast.shards.reader` reads them.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from vast.pipeline.inputs import AUDIO_SUFFIXES, VIDEO_SUFFIXES


def read_annotations(path: str | Path) -> list[dict[str, Any]]:
    """Annotation records from a JSON list, a ``{video_id: caption(s)}`` mapping, or JSON lines."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(data, dict):
        data = [{"video_id": k, "desc": v} for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a JSON list of records or a {{video_id: caption}} mapping")
    return data


def merge_records(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group records by video: ``desc`` (all captions), ``qa`` pairs, other fields from the first record."""
    videos: dict[str, dict[str, Any]] = {}
    for r in records:
        vid = r.get("video_id", r.get("clip_id", r.get("id")))
        if vid is None:
            raise ValueError(f"annotation record without video_id: {r}")
        v = videos.setdefault(str(vid), {"video_id": str(vid)})
        for name in ("desc", "caption"):
            caps = r.get(name)
            if caps is not None:
                v.setdefault("desc", []).extend([caps] if isinstance(caps, str) else list(caps))
        if r.get("question") is not None:
            answer = r.get("answer")
            answer = answer[0] if isinstance(answer, list) and answer else answer
            v.setdefault("qa", []).append({"question": str(r["question"]), "answer": str(answer)})
        for k, val in r.items():
            if k not in ("desc", "caption", "question", "answer", "video_id", "clip_id", "id"):
                v.setdefault(k, val)
    for v in videos.values():
        if v.get("qa"):
            v["question"], v["answer"] = v["qa"][0]["question"], v["qa"][0]["answer"]
    return videos


def find_media(media: Path, video_id: str) -> Path | None:
    """``media/<video_id>.<ext>`` (or a file named exactly ``video_id``)."""
    exact = media / video_id
    if exact.is_file():
        return exact
    for suffix in VIDEO_SUFFIXES + AUDIO_SUFFIXES:
        p = media / f"{video_id}{suffix}"
        if p.is_file():
            return p
    return None


def probe_duration(path: Path) -> float:
    """Container duration in seconds (ffprobe)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                          "default=nw=1:nk=1", str(path)], capture_output=True, text=True, timeout=60)
    try:
        return float(out.stdout.strip())
    except ValueError:
        return 0.0


def build_inputs(annotations: str | Path, media: str | Path, jsonl: Path) -> tuple[int, list[str]]:
    """Write the ingest input (one jsonl line per video); returns (videos written, ids without media)."""
    videos = merge_records(read_annotations(annotations))
    missing, n = [], 0
    with open(jsonl, "w", encoding="utf-8") as f:
        for vid, rec in videos.items():
            path = find_media(Path(media), vid)
            if path is None:
                missing.append(vid)
                continue
            start = float(rec.pop("start", 0.0) or 0.0)
            end = rec.pop("end", None)
            # One clip per video: a span request skips the scene cutter.
            end = float(end) if end is not None else probe_duration(path)
            row = {**rec, "url": str(path.resolve()), "start": start, "end": end if end > start else None}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n, missing


def shards_build(annotations: str, media: str, output: str, preset: str = "demo",
                 overrides: dict[str, Any] | None = None) -> int:
    """Pack ``annotations`` (upstream JSON) + ``media`` folder into shards under ``output``.

    ``preset``/``overrides``: the ingest config (media encoding, samples per shard, Ray) used for
    the packing. Returns 0 when every video is in a committed shard, 1 otherwise (missing media
    or failed clips, listed on stderr and in the ledger).
    """
    import sys

    from vast.pipeline.config import load_config
    from vast.pipeline.ingest import ingest

    cfg = load_config(preset, {"output": output, **(overrides or {})})
    # the downstream set brings its own annotations: cut the media, run no annotation stage
    cfg = dataclasses.replace(cfg, stages={k: v for k, v in cfg.stages.items() if k in ("fetch", "media")})
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "annotations.jsonl"
        n, missing = build_inputs(annotations, media, jsonl)
        for vid in missing:
            print(f"shards build: no media for video_id {vid!r} in {media}", file=sys.stderr)
        if n == 0:
            print("shards build: nothing to pack", file=sys.stderr)
            return 1
        summary = ingest([str(jsonl)], cfg)
    failed = summary["clips"]["failed"]
    print(f"shards build: {summary['clips']['ok']} clips packed into {output}, {failed} failed, "
          f"{len(missing)} without media", file=sys.stderr)
    return 0 if not failed and not missing else 1
