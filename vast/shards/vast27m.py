"""VAST-27M annotation JSON out of committed shards (the way in is ``vast-pipeline ingest``).

The released VAST-27M annotations are records of ``id``, ``url``, ``begin_s``, ``end_s``,
``begin_t``, ``end_t``, ``vision_cap`` (list), ``audio_cap`` (list), ``subtitle`` (str) and
``vast_cap`` (str); ``ingest`` reads such a file as input, in that form and the others copies use
(``vast.pipeline.inputs``), keeping the captions, and ``export_vast27m`` writes one from any
output directory of ours (``vast-pipeline export OUT FILE --format vast27m``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vast.shards.store import COMMIT_RE, OutputStore


def clock(seconds: float) -> str:
    """``HH:MM:SS.mmm`` (the ``begin_t``/``end_t`` form)."""
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def committed_files(output: str | OutputStore, suffix: str) -> list[str]:
    """Names of the committed ``shard-NNNNNN{suffix}`` files of an output directory, in commit order."""
    store = output if isinstance(output, OutputStore) else OutputStore(output, create=False)
    committed = set(store.committed_numbers())
    return [name for name in store.ls()
            if name.endswith(suffix) and (m := COMMIT_RE.search(name)) and int(m.group(1)) in committed]


def manifest(output: str) -> pa.Table:
    """Every committed manifest row of an output directory, in commit order."""
    store = OutputStore(output, create=False)
    tables = []
    for name in committed_files(store, ".parquet"):
        with store.open(name) as f:
            tables.append(pq.read_table(f))
    # manifests of older runs may lack newer columns: those read as null
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def vast27m_records(output: str) -> list[dict[str, Any]]:
    """The VAST-27M annotation records of an output directory's committed samples.

    ``id`` is the clip id of the record a sample was imported from (``id``/``clip_id`` of a
    VAST-27M or HD-VILA record with its span), else the sample's key.
    """
    rows = manifest(output).to_pylist()
    return [{
        "id": _clip_id(r), "url": r["url"], "begin_s": r["start"], "end_s": r["end"],
        "begin_t": clock(r["start"]), "end_t": clock(r["end"]),
        "vision_cap": r["vision_cap"] or [], "audio_cap": r["audio_cap"] or [],
        "subtitle": r["subtitle"] or "", "vast_cap": r["vast_cap"] or "",
    } for r in rows]


def _clip_id(row: dict[str, Any]) -> str:
    meta = json.loads(row["meta"] or "{}")
    named = meta.get("clip_id", meta.get("id"))
    # a whole video cut into several clips would give them all the record's id: only span requests keep it
    return str(named) if named is not None and row["request"] == row["key"] else row["key"]


def export_vast27m(output: str, path: str | Path) -> int:
    """Write the records as one JSON list to ``path``; returns how many."""
    records = vast27m_records(output)
    Path(path).write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    return len(records)
