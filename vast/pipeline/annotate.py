"""``annotate``: run chosen annotation stages over committed shards, into a new output directory.

Nothing is downloaded: each committed sample is unpacked from its tar (mp4, flac, json), frames
are decoded from the clip for the stages that need them, the chosen stages recompute their
fields (``overwrite``: that is the point of re-annotating — a new fusion prompt, a better
captioner), every other field is carried over unchanged, and the rows are committed like ingest
commits them. Resumable the same way: a sample settled in the new output is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vast.config import ConfigError
from vast.pipeline.config import IngestConfig
from vast.pipeline.graph import Prepare
from vast.pipeline.ingest import run_job
from vast.pipeline.media import MediaConfig, read_frames
from vast.pipeline.stage import SampleError, batch_of, fail, stage_class, stage_config
from vast.shards.ledger import ResumeState, read_ledger
from vast.shards.schema import ANNOTATION_FIELDS
from vast.shards.store import OutputStore

FETCH_STAGES = ("fetch", "media")
CLIP_INFO = ("duration", "fps", "width", "height", "has_audio", "audio_missing", "num_frames", "frame_times")


def annotate(shards: str, cfg: IngestConfig, stages: list[str] | None = None) -> dict[str, Any]:
    """Re-run ``stages`` (default: every annotation stage of ``cfg``) over the samples in ``shards``."""
    if OutputStore(shards).url == OutputStore(cfg.output).url:
        raise ConfigError("annotate writes new shards: --output must differ from the input directory")
    chosen = stages or [s for s in cfg.stages if s not in FETCH_STAGES]
    bad = [s for s in chosen if s in FETCH_STAGES or s not in cfg.stages]
    if bad or not chosen:
        offered = [s for s in cfg.stages if s not in FETCH_STAGES]
        raise ConfigError(f"cannot annotate with stage(s) {bad or chosen}: choose among {offered} "
                          "(the config's annotation stages)")
    media = stage_config("media", cfg.stages["media"].options) if "media" in cfg.stages else MediaConfig()
    run_cfg = dataclasses.replace(cfg, stages={name: _overwriting(name, cfg.stages[name]) for name in chosen})
    need_frames = any("frames" in getattr(stage_class(name), "needs", ()) for name in chosen)

    source = read_ledger(OutputStore(shards))
    ok = source.filter(pc.equal(source["status"], "ok")).select(["key", "shard"]).sort_by("shard")

    def plan(store: OutputStore, state: ResumeState) -> tuple[pa.Table, int]:
        todo = ok.filter(pc.invert(pc.is_in(ok["key"], state.done_requests)))
        return todo, ok.num_rows

    unpack = Prepare(fn=_Unpacker(shards, need_frames, media.num_frames, media.frame_size), batch_size=16)
    return run_job(run_cfg, plan, prepare=unpack)


def _overwriting(name: str, spec: Any) -> Any:
    options = dict(spec.options)
    if "overwrite" in {f.name for f in dataclasses.fields(stage_class(name).Config)}:
        options["overwrite"] = True
    return dataclasses.replace(spec, options=options)


class _Unpacker:
    """(key, shard) rows → full pipeline rows, reading each shard once per batch."""

    def __init__(self, shards: str, need_frames: bool, num_frames: int, frame_size: int):
        self.shards, self.need_frames = shards, need_frames
        self.num_frames, self.frame_size = num_frames, frame_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        store = OutputStore(self.shards)
        wanted: dict[str, set[str]] = {}
        for key, shard in zip(batch["key"], batch["shard"], strict=True):
            wanted.setdefault(str(shard), set()).add(str(key))
        rows = []
        for shard, keys in wanted.items():
            members = _read_members(store, shard, keys)
            rows += [self._row(key, members.get(key, {})) for key in sorted(keys)]
        return batch_of(rows, None, {"frames": np.zeros((0, self.frame_size, self.frame_size, 3), np.uint8)})

    def _row(self, key: str, members: dict[str, bytes]) -> dict[str, Any]:
        meta = json.loads(members["json"]) if "json" in members else {}
        row: dict[str, Any] = {
            "request": key, "key": key, "input": meta.get("input", ""), "video_id": meta.get("video_id", ""),
            "source": meta.get("url", ""), "start": (meta.get("span") or [np.nan, np.nan])[0],
            "end": (meta.get("span") or [np.nan, np.nan])[1], "meta": json.dumps(meta.get("meta", {})),
            "skip_keys": [], "n_clips": 1, "status": "ok", "error_class": "", "message": "", "stage": "",
            # placeholder tracks (vast.shards.schema) are no media to annotate
            "mp4": members.get("mp4", b"") if meta.get("has_video", True) else b"",
            "flac": members.get("flac", b"") if meta.get("has_audio", True) else b"",
            "source_info": json.dumps(meta.get("source_info", {})),
            "clip_info": json.dumps({k: meta.get(k) for k in CLIP_INFO}),
        }
        for name in ANNOTATION_FIELDS:
            if name in meta:
                value = meta[name]
                row[name] = json.dumps(value) if name in ("provenance", "subtitle_segments") else value
        if "mp4" not in members or "json" not in members:
            return fail(row, "decode_error", f"sample {key} is incomplete in its shard", "annotate")
        if self.need_frames and row["mp4"]:
            try:
                with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
                    f.write(members["mp4"])
                    f.flush()
                    row["frames"] = read_frames(f.name, self.num_frames, self.frame_size)[0]
            except SampleError as e:
                return fail(row, e.error_class, e.message, "annotate")
        return row


def _read_members(store: OutputStore, shard: str, keys: set[str]) -> dict[str, dict[str, bytes]]:
    """The members of ``keys`` in one tar, streamed (never extracted to disk)."""
    out: dict[str, dict[str, bytes]] = {}
    with store.open(shard) as f, tarfile.open(fileobj=f, mode="r|") as tf:
        for info in tf:
            key, _, ext = Path(info.name).name.partition(".")
            if key in keys and info.isfile():
                data = tf.extractfile(info)
                out.setdefault(key, {})[ext] = data.read() if data else b""
    return out

