"""VAST-27M annotation JSON out of committed shards (the way in is ``vast-pipeline ingest``).

The released VAST-27M annotations are records of ``id``, ``url``, ``begin_s``, ``end_s``,
``begin_t``, ``end_t``, ``vision_cap`` (list), ``audio_cap`` (list), ``subtitle`` (str) and
``vast_cap`` (str); ``ingest`` reads such a file as input (keeping the captions), and
``export_vast27m`` writes one from any output directory of ours.
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


def manifest(output: str) -> pa.Table:
    """Every committed manifest row of an output directory, in commit order."""
    store = OutputStore(output)
    committed = set(store.committed_numbers())
    tables = []
    for name in store.ls():
        m = COMMIT_RE.search(name)
        if name.endswith(".parquet") and m and int(m.group(1)) in committed:
            with store.open(name) as f:
                tables.append(pq.read_table(f))
    return pa.concat_tables(tables) if tables else pa.table({})


def vast27m_records(output: str) -> list[dict[str, Any]]:
    """The VAST-27M annotation records of an output directory's committed samples."""
    rows = manifest(output).to_pylist()
    return [{
        "id": r["key"], "url": r["url"], "begin_s": r["start"], "end_s": r["end"],
        "begin_t": clock(r["start"]), "end_t": clock(r["end"]),
        "vision_cap": r["vision_cap"] or [], "audio_cap": r["audio_cap"] or [],
        "subtitle": r["subtitle"] or "", "vast_cap": r["vast_cap"] or "",
    } for r in rows]


def export_vast27m(output: str, path: str | Path) -> int:
    """Write the records as one JSON list to ``path``; returns how many."""
    records = vast27m_records(output)
    Path(path).write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    return len(records)
