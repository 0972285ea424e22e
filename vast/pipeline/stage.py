"""What every stage of the ingest graph is: a class built from its config, called on a batch.

A batch is a dict of equal-length columns (lists or numpy arrays), one row per clip (or, before
the media stage cuts a whole video, per request). Every row carries the ledger columns below;
a row whose ``status`` is ``failed`` has reached its terminal state and every later stage
passes it through untouched, so the shard writer commits it as a ledger row. Per-sample
problems never raise out of a batch: they become failed rows with an error class and the
original message.
"""

from __future__ import annotations

import dataclasses
import importlib
import traceback
from collections.abc import Iterable
from typing import Any, ClassVar

import numpy as np

from vast.shards.schema import valid_text

# Terminal failure classes (DESIGN.md "The ledger"): exactly the ones README's table documents
# (tests/test_failure_classes.py holds the two together); a stage that needs a new one adds it here.
ERROR_CLASSES = (
    "invalid_input", "unavailable", "private", "age_restricted", "geo_blocked", "rate_limited",
    "network", "unsupported", "too_long", "too_large", "decode_error", "no_video_stream",
    "empty_media", "out_of_memory", "stage_error", "other",
)
TRANSIENT_CLASSES = frozenset({"network", "rate_limited"})

# Columns every row carries from planning to the shard writer.
LEDGER_COLUMNS = (
    "request",      # str: the input request key (clip key for spans, video key for whole videos)
    "key",          # str: clip key {video_id}_{start_ms}_{end_ms}; == request until a video is cut
    "input",        # str: where the request came from, "file:line"
    "video_id",     # str
    "source",       # str: URL or absolute local path
    "start",        # float seconds, NaN when the request names no span
    "end",          # float seconds, NaN when the request names no span
    "meta",         # str: JSON object of the input's extra columns, passed through to the sample json
    "skip_keys",    # list[str]: clip keys of this request already committed (whole-video resume)
    "n_clips",      # int: clips the request was cut into (1 until the media stage cuts it)
    "status",       # "ok" | "failed"
    "error_class",  # "" when ok
    "message",      # "" when ok: the original error text
    "stage",        # "" when ok: the stage that failed the row
)


LIST_COLUMNS = ("skip_keys", "vision_cap", "audio_cap")


class SampleError(Exception):
    """Raised inside a stage for one sample: becomes a failed row, never escapes the batch."""

    def __init__(self, error_class: str, message: str):
        super().__init__(f"{error_class}: {message}")
        self.error_class = error_class
        self.message = message


def batch_len(batch: dict[str, Any]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


def rows_of(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Columns → list of row dicts (numpy scalars turned into Python values)."""
    n = batch_len(batch)
    cols = {k: (v.tolist() if isinstance(v, np.ndarray) and v.dtype != object and v.ndim == 1 else v)
            for k, v in batch.items()}
    rows = [{k: cols[k][i] for k in cols} for i in range(n)]
    for row in rows:  # list columns arrive as arrays of str; keep them lists so Arrow sees one type
        for k in LIST_COLUMNS:
            if isinstance(row.get(k), np.ndarray):
                row[k] = row[k].tolist()
    return rows


def batch_of(rows: list[dict[str, Any]], columns: Iterable[str] | None = None,
             defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """List of row dicts → columns. Missing values take ``defaults[col]`` (so failed rows fit)."""
    defaults = defaults or {}
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    out: dict[str, Any] = {}
    for c in cols:
        values = [r.get(c, defaults.get(c)) for r in rows]
        if values and all(isinstance(v, np.ndarray) for v in values) and \
                len({v.shape for v in values}) == 1 and len({v.dtype for v in values}) == 1:
            out[c] = np.stack(values)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            out[c] = arr
    return out


def fail(row: dict[str, Any], error_class: str, message: str, stage: str) -> dict[str, Any]:
    """A copy of ``row`` in its terminal failed state (the message made valid Unicode for Arrow)."""
    return {**row, "status": "failed", "error_class": error_class, "message": valid_text(message),
            "stage": stage}


class Stage:
    """Base of the per-row stages (fetch, media): subclasses implement ``process``.

    ``process(row)`` returns the rows this input row becomes (one, or several when a video is
    cut into clips) or raises ``SampleError``. Any other exception from one row is a bug in
    that row's handling, but one bad sample must not sink the batch: it is recorded as
    ``stage_error`` with its traceback's last line.
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    # Columns this stage adds, with the value failed rows get, so every batch has one schema.
    output_defaults: ClassVar[dict[str, Any]] = {}
    # Columns this stage consumes and drops.
    drops: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: list[dict[str, Any]] = []
        for row in rows_of(batch):
            if row["status"] != "ok":
                out.append(row)
                continue
            try:
                out.extend(self.process(row))
            except SampleError as e:
                out.append(fail(row, e.error_class, e.message, self.name))
            except Exception as e:  # noqa: BLE001 - recorded per sample, see docstring
                last = traceback.format_exception_only(e)[-1].strip()
                out.append(fail(row, "stage_error", last, self.name))
        for row in out:
            for col in self.drops:
                row.pop(col, None)
        columns = [c for c in dict.fromkeys(list(batch) + list(self.output_defaults)) if c not in self.drops]
        return batch_of(out, columns, self.output_defaults)


# Stages by name: "module:Class", imported when a graph uses them (heavy imports stay lazy).
STAGES: dict[str, str] = {
    "fetch": "vast.pipeline.fetch:Fetcher",
    "media": "vast.pipeline.media:MediaCutter",
    "vision_caption": "vast.captioners.vision:VisionCaptioner",
    "audio_caption": "vast.captioners.audio:AudioCaptioner",
    "subtitle": "vast.captioners.subtitles:WhisperSubtitler",
    "fusion": "vast.captioners.fusion:OmniCaptionFuser",
}


def stage_class(name: str) -> type[Stage]:
    """The stage class registered under ``name``."""
    try:
        module, cls = STAGES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}") from None
    return getattr(importlib.import_module(module), cls)


def preflight(stages: dict[str, Any]) -> None:
    """Run each stage class's ``preflight(config)`` (if it has one) in the driver, before any Ray work:
    a missing model is one clear ``ConfigError``, not a stack trace from inside an actor.

    ``stages`` maps stage names to their run specs (anything with ``options``).
    """
    for name, spec in stages.items():
        check = getattr(stage_class(name), "preflight", None)
        if check is not None:
            check(stage_config(name, spec.options))


def stage_config(name: str, options: dict[str, Any]) -> Any:
    """Build stage ``name``'s config dataclass from its options (validated)."""
    from vast.config import from_dict

    cls = stage_class(name)
    assert dataclasses.is_dataclass(cls.Config)
    return from_dict(cls.Config, options, f"stages.{name}.options.")
