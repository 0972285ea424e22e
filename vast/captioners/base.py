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
"""

from __future__ import annotations

import hashlib
import json
import traceback
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

from vast.pipeline.stage import SampleError, batch_of, fail, rows_of


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
    needs: ClassVar[tuple[str, ...]] = ()
    """Columns a row must carry for this stage to run (e.g. ``frames``)."""

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | SampleError]:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """Model name, weights checksum, decoding settings, prompt version: recorded per field."""
        raise NotImplementedError

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = rows_of(batch)
        todo = [i for i, r in enumerate(rows) if r["status"] == "ok" and self._wanted(r)]
        if todo:
            results = self._run([rows[i] for i in todo])
            record = self.provenance()
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, SampleError):
                    rows[i] = fail(rows[i], result.error_class, result.message, self.name)
                    continue
                rows[i].update(result)
                prov = _loads(rows[i].get("provenance"))
                prov.update({f: record for f in result if f in self.fields})
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
