"""``annotate``: run chosen annotation stages over committed shards, into a new output directory.

Nothing is downloaded: each committed sample is unpacked from its tar (mp4, flac, json), frames
are decoded from the clip for the stages that need them, the chosen stages recompute their
fields (``overwrite``: that is the point of re-annotating — a new fusion prompt, a better
captioner), and the rows are committed like ingest commits them. Resumable the same way: a
sample settled in the new output is not redone.

**Lineage.** Everything a chosen stage does not recompute is carried over unchanged: the
sample's key, ``request``, ``input``, span, clip facts, ``meta``, media bytes, the other fields
and their provenance. A stage reads fields other stages write (``ModelStage.inputs``: fusion
reads ``vision_cap``, ``audio_cap`` and ``subtitle``), so recomputing one outdates its
dependents. ``dependents`` decides what happens to them:

- ``rerun`` (default): the config's stages that depend on a chosen stage, directly or through
  another dependent, run too (``--stage subtitle`` re-fuses ``vast_cap`` from the new subtitle);
- ``stale``: they are not run; their fields keep their values and each field's provenance gets
  ``stale``: which recomputed input outdated it and the command that refreshes it. The summary
  lists them (``summary["stale"]``).

A dependent that the config does not define cannot be re-run: its fields are marked stale either way.
"""

from __future__ import annotations

import dataclasses
import json
import sys
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


DEPENDENTS = ("rerun", "stale")


def annotate(shards: str, cfg: IngestConfig, stages: list[str] | None = None,
             dependents: str = "rerun") -> dict[str, Any]:
    """Re-run ``stages`` (default: every annotation stage of ``cfg``) over the samples in ``shards``;
    ``dependents`` (``rerun`` or ``stale``): what happens to the fields computed from theirs."""
    if OutputStore(shards, create=False).url == OutputStore(cfg.output).url:
        raise ConfigError("annotate writes new shards: --output must differ from the input directory")
    if dependents not in DEPENDENTS:
        raise ConfigError(f"--dependents must be one of {', '.join(DEPENDENTS)}, got {dependents!r}")
    chosen = stages or [s for s in cfg.stages if s not in FETCH_STAGES]
    bad = [s for s in chosen if s in FETCH_STAGES or s not in cfg.stages]
    if bad or not chosen:
        offered = [s for s in cfg.stages if s not in FETCH_STAGES]
        raise ConfigError(f"cannot annotate with stage(s) {bad or chosen}: choose among {offered} "
                          "(the config's annotation stages)")
    downstream, stale = dependent_stages(chosen, cfg, rerun=dependents == "rerun", shards=shards)
    run = [name for name in cfg.stages if name in chosen or name in downstream]  # the config's order
    media = stage_config("media", cfg.stages["media"].options) if "media" in cfg.stages else MediaConfig()
    run_cfg = dataclasses.replace(cfg, stages={name: _overwriting(name, cfg.stages[name]) for name in run})
    need_frames = any("frames" in getattr(stage_class(name), "needs", ()) for name in run)
    if downstream:
        print(f"annotate: also re-running {', '.join(downstream)}: computed from what {', '.join(chosen)} "
              "recomputes (--dependents stale keeps them and marks them stale)", file=sys.stderr)
    for field, why in stale.items():
        print(f"annotate: NOTE {field} is marked stale: {why}", file=sys.stderr)

    source = read_ledger(OutputStore(shards, create=False))
    ok = source.filter(pc.equal(source["status"], "ok")).select(["key", "shard"]).sort_by("shard")

    def plan(store: OutputStore, state: ResumeState) -> tuple[pa.Table, int]:
        todo = ok.filter(pc.invert(pc.is_in(ok["key"], state.done_requests)))
        return todo, ok.num_rows

    unpacker = _Unpacker(shards, need_frames, media.num_frames, media.frame_size, stale)
    unpack = Prepare(fn=unpacker, batch_size=16)
    summary = run_job(run_cfg, plan, prepare=unpack)
    if stale:
        summary["stale"] = stale
    return summary


def dependent_stages(chosen: list[str], cfg: IngestConfig, rerun: bool, shards: str = "SHARDS"
                     ) -> tuple[list[str], dict[str, str]]:
    """The stages of ``cfg`` computed from the fields ``chosen`` recompute (directly or not), to re-run
    (``rerun``), and the fields left stale, each with the reason and the command that refreshes it."""
    from vast.pipeline.stage import STAGES

    produced = {f for name in chosen for f in getattr(stage_class(name), "fields", ())}
    downstream: list[str] = []
    stale: dict[str, str] = {}
    for name in STAGES:  # registry order is the data flow: captioners, subtitle, then fusion
        cls = stage_class(name)
        if name in chosen or not set(getattr(cls, "inputs", ())) & produced:
            continue
        outdated = sorted(set(cls.inputs) & produced)
        produced |= set(cls.fields)
        if rerun and name in cfg.stages:
            downstream.append(name)
            continue
        fix = (f"vast-pipeline annotate {shards} NEW --stage {name}" if name in cfg.stages
               else f"a config with a {name} stage")
        for field in cls.fields:
            stale[field] = (f"computed from {', '.join(outdated)}, which annotate recomputed; "
                            f"refresh with: {fix}")
    return downstream, stale


def _overwriting(name: str, spec: Any) -> Any:
    options = dict(spec.options)
    if "overwrite" in {f.name for f in dataclasses.fields(stage_class(name).Config)}:
        options["overwrite"] = True
    return dataclasses.replace(spec, options=options)


class _Unpacker:
    """(key, shard) rows → full pipeline rows, reading each shard once per batch; fields in ``stale``
    get the reason in their provenance."""

    def __init__(self, shards: str, need_frames: bool, num_frames: int, frame_size: int,
                 stale: dict[str, str] | None = None):
        self.shards, self.need_frames = shards, need_frames
        self.num_frames, self.frame_size = num_frames, frame_size
        self.stale = stale or {}

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        store = OutputStore(self.shards, create=False)
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
        span = meta.get("span") or [np.nan, np.nan]
        # the sample's own facts, carried as they are: the writer rebuilds the json from these columns
        row: dict[str, Any] = {
            "request": meta.get("request", key), "key": key, "input": meta.get("input", ""),
            "video_id": meta.get("video_id", ""), "source": meta.get("url", ""),
            "start": np.nan if span[0] is None else span[0], "end": np.nan if span[1] is None else span[1],
            "meta": json.dumps(meta.get("meta", {})), "skip_keys": [], "n_clips": 1, "status": "ok",
            "error_class": "", "message": "", "stage": "",
            # placeholder tracks (vast.shards.schema) are no media to annotate
            "mp4": members.get("mp4", b"") if meta.get("has_video", True) else b"",
            "flac": members.get("flac", b"") if meta.get("has_audio", True) else b"",
            "source_info": json.dumps(meta.get("source_info", {})),
            "clip_info": json.dumps({k: v for k, v in meta.items() if k not in ANNOTATION_FIELDS}),
        }
        for name in ANNOTATION_FIELDS:
            if name in meta:
                value = meta[name]
                if name == "provenance" and self.stale:
                    value = {f: {**rec, "stale": self.stale[f]} if f in self.stale else rec
                             for f, rec in value.items()}
                row[name] = json.dumps(value) if name in ("provenance", "subtitle_segments") else value
        video = bool(meta.get("num_frames"))  # audio-only samples have no mp4 member
        if "json" not in members or (video and "mp4" not in members):
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

