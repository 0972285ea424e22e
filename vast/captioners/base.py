"""``ModelStage``: the base of the batched model stages (captioners, Whisper, LLM fusion).

A model stage runs as a pool of Ray actors (``actors: N`` in the preset), so its model is loaded
once in ``__init__``; it is then called on batches. It annotates the rows that are ``ok`` and
lack its fields (or all ok rows with ``overwrite``), writes one provenance record per field it
produced, and never lets one sample sink a batch:

- ``annotate(rows)`` returns, per row, either a dict of new field values or a ``SampleError``
  (a per-sample failure: that row becomes a failed ledger row, the others go on);
- if ``annotate`` raises for the whole batch (e.g. CUDA out of memory), the batch is split in
  halves and each half retried, down to single rows, so nothing is dropped for a batch-level
  failure; a single row that still raises becomes a failed row with the original message.

**What a stage needs.** ``needs`` names the modalities a row must carry (``MODALITIES``: ``frames``,
``audio``, ``captions``). A row without one is not a failure: its fields get their typed empty
values (``empty``: ``[]`` for caption lists, ``""`` for text) and the reason goes into each field's
provenance as ``empty_reason`` — ``label`` on an audio file runs the vision captioner as calmly as
ingest runs the audio captioner on a silent video. ``annotate`` may return the same key
(``EMPTY_REASON``) next to a row's values when the model itself left a field empty (Whisper
skipping a no-speech window); the key is never written to the sample.

**Lineage.** Every field's provenance record holds the stage's model record (``provenance()``),
``inputs`` — a short sha256 of each row value the stage read (``inputs``: ``mp4``, ``flac``, or the
fields fusion reads) — and ``empty_reason`` (``""`` when the field has a value). A field whose
recorded input digests differ from the row's current values was computed from other inputs:
``annotate`` re-runs such dependents, or marks them ``stale`` (see ``vast.pipeline.annotate``).
"""

from __future__ import annotations

import hashlib
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from vast.pipeline.stage import SampleError, batch_of, fail, rows_of

EMPTY_REASON = "empty_reason"
"""Key of a result dict (``annotate``'s) that says why the row's fields are empty; goes to provenance."""


def _frames_reason(row: dict[str, Any]) -> str:
    frames = row.get("frames")
    n = len(frames) if isinstance(frames, list | tuple) or hasattr(frames, "shape") else 0
    return "" if n else "no video frames (an audio-only item)"


def _audio_reason(row: dict[str, Any]) -> str:
    if row.get("flac"):
        return ""
    missing = _loads(row.get("clip_info")).get("audio_missing")
    return f"no audio ({missing})" if missing else "no audio track"


def _captions_reason(row: dict[str, Any]) -> str:
    def present(value: Any) -> bool:
        if isinstance(value, str):
            return bool(value.strip())
        return value is not None and not isinstance(value, float) and any(str(v).strip() for v in value)

    if any(present(row.get(f)) for f in ("vision_cap", "audio_cap", "subtitle")):
        return ""
    return "nothing to fuse: no vision caption, audio caption or subtitle"


MODALITIES: dict[str, Callable[[dict[str, Any]], str]] = {
    "frames": _frames_reason,
    "audio": _audio_reason,
    "captions": _captions_reason,
}
"""What a stage can need, each a check that returns why a row lacks it ("" when it has it).
``captions``: at least one non-empty vision caption, audio caption or subtitle (fusion's input)."""


def input_digest(value: Any) -> str:
    """A short sha256 (16 hex digits) of one row value: bytes as they are, anything else as JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, float) and value != value:  # NaN: a missing value in a numpy batch
            value = None
        data = json.dumps(value, ensure_ascii=False, sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


@dataclass
class ModelStageConfig:
    """Settings every model stage shares (stage configs subclass this)."""

    device: str = "auto"
    """``auto`` (CUDA when the actor has a GPU, else CPU), ``cpu``, ``cuda``, ``cuda:1`` …"""
    dtype: str = "auto"
    """``auto`` (bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU), ``bf16``, ``fp16``,
    ``fp32``."""
    overwrite: bool = False
    """Recompute fields a sample already has (e.g. imported VAST-27M captions); default keeps them."""
    gpu_memory_fraction: float | None = None
    """Cap this actor's share of its GPU's memory (set it to the stage's ``num_gpus`` fraction)."""
    seed: int = 0
    """Seed for sampling, so a rerun gives the same annotations."""


def pick_device(config: ModelStageConfig) -> Any:
    """The torch device and dtype a stage runs with, applying the memory cap."""
    import torch

    name = config.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if config.dtype == "auto":
        if device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float32
    else:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[config.dtype]
    if device.type == "cuda" and config.gpu_memory_fraction:
        torch.cuda.set_per_process_memory_fraction(config.gpu_memory_fraction, device)
    return device, dtype


@cache
def weights_checksum(path: str) -> str:
    """sha256 of a weights file, or of every file in a weights directory (sorted by name)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(str(f.relative_to(p)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class ModelStage:
    """Batched model stage; subclasses set ``name``, ``Config``, ``fields`` and implement ``annotate``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    fields: ClassVar[tuple[str, ...]]
    """The sample fields this stage writes; rows that have them all are skipped unless ``overwrite``."""
    empty: ClassVar[dict[str, Any]]
    """The value of each field when there is nothing to annotate (typed: ``[]``, ``""``)."""
    needs: ClassVar[tuple[str, ...]] = ()
    """Modalities (``MODALITIES``) a row must carry; without one, the fields are empty with a reason."""
    inputs: ClassVar[tuple[str, ...]] = ()
    """Row values the fields are computed from, digested into each field's provenance."""
    model_options: ClassVar[tuple[str, ...]] = ()
    """Config options naming a model (a hub id or a local path): checked before the graph starts."""

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | SampleError]:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """Model name, weights checksum, decoding settings, prompt version: recorded per field."""
        raise NotImplementedError

    @classmethod
    def model_refs(cls, config: Any) -> dict[str, str]:
        """Option name → model reference (hub id or path) of the models this config loads."""
        return {o: getattr(config, o) for o in cls.model_options if getattr(config, o)}

    @classmethod
    def preflight(cls, config: Any) -> None:
        """Raise ``ModelMissing`` (one clear message naming the fix) when a model is not on this machine;
        called in the driver before any Ray actor loads it."""
        from vast.captioners.hub import resolve_model

        for option, ref in cls.model_refs(config).items():
            resolve_model(ref, where=f"stages.{cls.name}.options.{option}")

    def empty_values(self) -> dict[str, Any]:
        """A fresh copy of ``empty`` (no list shared between rows)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in self.empty.items()}

    def missing_input(self, row: dict[str, Any]) -> str:
        """Why ``row`` lacks what this stage needs ("" when it has everything)."""
        return "; ".join(r for r in (MODALITIES[m](row) for m in self.needs) if r)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = rows_of(batch)
        todo = [i for i, r in enumerate(rows) if r["status"] == "ok" and self._wanted(r)]
        if todo:
            results: dict[int, dict[str, Any] | SampleError] = {}
            run = []
            for i in todo:
                reason = self.missing_input(rows[i])
                if reason:
                    results[i] = {**self.empty_values(), EMPTY_REASON: reason}
                else:
                    run.append(i)
            if run:
                results.update(zip(run, self._run([rows[i] for i in run]), strict=True))
            record = self.provenance()
            for i in todo:
                result = results[i]
                if isinstance(result, SampleError):
                    rows[i] = fail(rows[i], result.error_class, result.message, self.name)
                    continue
                values = {k: v for k, v in result.items() if k != EMPTY_REASON}
                entry = {**record, "inputs": {name: input_digest(rows[i].get(name)) for name in self.inputs},
                         "empty_reason": result.get(EMPTY_REASON) or ""}
                rows[i].update(values)
                prov = _loads(rows[i].get("provenance"))
                prov.update({f: entry for f in values if f in self.fields})
                rows[i]["provenance"] = json.dumps(prov, ensure_ascii=False)
        columns = list(dict.fromkeys([*batch, *self.fields, "provenance"]))
        return batch_of(rows, columns, {"provenance": "{}"})

    def _wanted(self, row: dict[str, Any]) -> bool:
        return self.config.overwrite or any(_missing(row.get(f)) for f in self.fields)

    def _run(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | SampleError]:
        try:
            out = self.annotate(rows)
            if len(out) != len(rows):
                raise RuntimeError(f"{self.name}.annotate returned {len(out)} results for {len(rows)} rows")
            return out
        except Exception as e:  # noqa: BLE001 - split and retry; see the module docstring
            _free_accelerator_memory()
            if len(rows) == 1:
                cls = "out_of_memory" if "out of memory" in str(e).lower() else "stage_error"
                return [SampleError(cls, traceback.format_exception_only(e)[-1].strip())]
            mid = len(rows) // 2
            return self._run(rows[:mid]) + self._run(rows[mid:])


def decode_audio(data: bytes, rate: int = 16000) -> Any:
    """Encoded audio (the sample's FLAC) → float32 mono waveform at ``rate`` (numpy, (T,))."""
    import subprocess

    import numpy as np

    if not data:
        return np.zeros(0, np.float32)
    args = ["ffmpeg", "-v", "error", "-i", "pipe:0", "-f", "f32le", "-ac", "1", "-ar", str(rate), "pipe:1"]
    proc = subprocess.run(args, input=bytes(data), capture_output=True, check=False)
    if proc.returncode != 0:
        raise SampleError("decode_error", proc.stderr.decode(errors="replace").strip()[-500:])
    return np.frombuffer(proc.stdout, np.float32).copy()


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    return False


def _loads(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return dict(text)
    # null in Arrow arrives as None or NaN in a numpy batch
    return json.loads(text) if isinstance(text, (str, bytes)) and text else {}


def _free_accelerator_memory() -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
