"""The numbers behind the report's figures, streamed from an output's committed data.

The effective ledger (``vast.shards.ledger``) says which clips are ok and which failed, and why;
the manifests (one parquet per commit) hold the ok samples' fields. Only the columns a figure
needs are read, one manifest at a time, and every distribution is kept as counts in integer bins,
so memory grows with a few narrow ledger columns, never with the captions or media of a million
clips. Manifest columns are read by name; a column an output lacks (no subtitle stage ran, an
older schema) leaves its figure empty instead of failing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vast.shards.ledger import read_ledger, read_raw
from vast.shards.store import COMMIT_RE, OutputStore

# What the report needs of the ledger: what the effective ledger is computed from, the failure class,
# and the ok rows' duration and shard. Messages are read later, only for the rows the page shows.
LEDGER_COLUMNS = ("key", "request", "input", "status", "error_class", "commit", "duration", "shard")
MANIFEST_COLUMNS = ("key", "duration", "has_audio", "subtitle", "subtitle_language", "vision_cap",
                    "audio_cap", "vast_cap", "provenance")
CAPTION_FIELDS = ("vision_cap", "audio_cap", "subtitle", "vast_cap")
DURATION_BIN_S = 0.5
RUN_GAP_S = 300.0
"""A pause between commits longer than this (or 5× the typical pause, if longer) starts a new run."""


@dataclass
class CaptionStats:
    """One caption field over the ok samples: how many have it, how many are empty, words per caption."""

    rows: int = 0
    """Samples whose manifest holds the field (not null)."""
    empty_rows: int = 0
    """Of those, samples with no non-empty caption (a silent clip's ``audio_cap == []``)."""
    captions: int = 0
    """Non-empty captions (a list field holds several per sample)."""
    words: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """``words[n]``: non-empty captions of ``n`` words (whitespace-separated)."""


@dataclass
class Run:
    """A run of commits, inferred from the ledger's commit times (the ledger records no run id)."""

    first_commit: int
    last_commit: int
    start: float
    """Unix time of the run's first commit."""
    end: float
    clips: int
    """Clips settled (ok or failed) by the run's commits."""
    after_first: int = 0
    """Clips settled by the commits after the first one."""

    @property
    def clips_per_s(self) -> float | None:
        """Clips settled after the first commit over the time since it (start-up is not in the ledger)."""
        return None if self.end <= self.start else self.after_first / (self.end - self.start)


@dataclass
class CorpusStats:
    """Everything the report's summary and figures show; see ``collect``."""

    output: str
    ok: int
    failed: int
    duplicate_lines: int
    requests: int
    hours: float
    bytes: int
    shards: int
    errors: dict[str, int]
    """Failed clips per error class, most frequent first."""
    manifest_rows: int = 0
    """Ok samples found in the committed manifests (equals ``ok`` for an intact output)."""
    durations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """``durations[i]``: ok clips lasting ``[i, i+1) × DURATION_BIN_S`` seconds."""
    audio: dict[str, int] = field(default_factory=dict)
    speech: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    """Subtitle language of the clips with speech, most frequent first."""
    captions: dict[str, CaptionStats] = field(default_factory=dict)
    provenance: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per generated field, samples per provenance label (model, weights, prompt version)."""
    commits: list[dict[str, Any]] = field(default_factory=list)
    """Per commit (in commit order): ``commit``, ``time``, ``ok``, ``failed``."""
    runs: list[Run] = field(default_factory=list)
    latest_run: dict[str, Any] | None = None
    """The ``run`` figures ``summary.json`` holds for the latest run (its clips/s, seconds…)."""
    notice: str | None = None


def collect(store: OutputStore) -> tuple[CorpusStats, pa.Table]:
    """The report's numbers for ``store``, and the effective ledger (``LEDGER_COLUMNS``) they came from."""
    ledger = read_ledger(store, LEDGER_COLUMNS)
    status = pc.value_counts(ledger["status"]) if ledger.num_rows else []
    by_status = {v["values"].as_py(): v["counts"].as_py() for v in status}
    failed = ledger.filter(pc.equal(ledger["status"], "failed"))
    ok = ledger.filter(pc.equal(ledger["status"], "ok"))
    tars = committed_tars(store)
    requests = ledger.filter(pc.not_equal(ledger["request"], ""))["request"]
    stats = CorpusStats(
        output=store.url,
        ok=by_status.get("ok", 0),
        failed=by_status.get("failed", 0),
        duplicate_lines=by_status.get("duplicate", 0),
        requests=pc.count_distinct(requests).as_py() if len(requests) else 0,
        hours=float(pc.sum(ok["duration"]).as_py() or 0.0) / 3600,
        bytes=sum(tars.values()),
        shards=len(tars),
        errors=_counts(failed["error_class"]),
    )
    _scan_manifests(store, ok, stats)
    stats.commits = commit_times(store)
    stats.runs = infer_runs(stats.commits)
    if store.exists("summary.json"):
        with store.open("summary.json") as f:
            saved = json.loads(f.read())
        stats.latest_run, stats.notice = saved.get("run"), saved.get("notice")
    return stats, ledger


def committed_tars(store: OutputStore) -> dict[str, int]:
    """Name → size of every committed shard tar (one listing call, also on object stores)."""
    committed = set(store.committed_numbers())
    out = {}
    for entry in store.fs.ls(store.root, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        m = COMMIT_RE.search(name)
        if name.endswith(".tar") and m and int(m.group(1)) in committed:
            out[name] = int(entry["size"])
    return dict(sorted(out.items()))


def _counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    if len(column) == 0:
        return {}
    pairs = [(v["values"].as_py(), v["counts"].as_py()) for v in pc.value_counts(column)]
    return dict(sorted(pairs, key=lambda kv: (-kv[1], str(kv[0]))))


def _ok_keys_by_shard(ok: pa.Table) -> dict[str, pa.Array]:
    """The effective ok keys of each shard tar: a manifest row counts only if its commit is the one
    the effective ledger keeps for its key."""
    if ok.num_rows == 0:
        return {}
    in_shard = pc.fill_null(pc.not_equal(ok["shard"], ""), False)
    ok = ok.select(["shard", "key"]).filter(in_shard).sort_by("shard")
    if ok.num_rows == 0:
        return {}
    runs = pc.run_end_encode(ok["shard"].combine_chunks())
    keys = ok["key"].combine_chunks()
    ends = runs.run_ends.to_numpy()
    starts = np.concatenate([[0], ends[:-1]])
    return {shard: keys.slice(int(s), int(e - s))
            for shard, s, e in zip(runs.values.to_pylist(), starts, ends, strict=True)}


def _scan_manifests(store: OutputStore, ok: pa.Table, stats: CorpusStats) -> None:
    keys_of = _ok_keys_by_shard(ok)
    stats.audio = {"with audio": 0, "without audio": 0}
    stats.speech = {"speech": 0, "no speech": 0, "not transcribed": 0}
    languages: dict[str, int] = {}
    for tar in keys_of:
        name = tar.removesuffix(".tar") + ".parquet"
        try:
            with store.open(name) as f:
                pf = pq.ParquetFile(f)
                columns = [c for c in MANIFEST_COLUMNS if c in pf.schema_arrow.names]
                table = pf.read(columns=columns)
        except FileNotFoundError:
            continue  # a damaged output: the summary shows fewer manifest rows than ok clips
        if "key" not in columns:
            continue
        keep = pc.is_in(table["key"], value_set=keys_of[tar])
        if not pc.all(keep).as_py():
            table = table.filter(keep)
        _add_manifest(table, stats, languages)
    stats.languages = dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0])))
    if stats.speech["speech"] + stats.speech["no speech"] == 0:
        stats.speech = {}  # no subtitle stage ran: no figure rather than a bar of "not transcribed"


def _add_manifest(table: pa.Table, stats: CorpusStats, languages: dict[str, int]) -> None:
    n = table.num_rows
    stats.manifest_rows += n
    if "duration" in table.column_names:
        d = table["duration"].drop_null().to_numpy()
        d = d[np.isfinite(d) & (d >= 0)]
        stats.durations = _add_bins(stats.durations, np.floor(d / DURATION_BIN_S).astype(np.int64))
    if "has_audio" in table.column_names:
        has = table["has_audio"]
        with_audio = int(pc.sum(pc.cast(pc.fill_null(has, False), pa.int64())).as_py() or 0)
        stats.audio["with audio"] += with_audio
        stats.audio["without audio"] += n - has.null_count - with_audio
    # samples carry every field typed, empty or not: provenance says which stage actually ran on a row
    made = _provenance_keys(table)
    speech = pa.array(np.zeros(n, bool))
    if "subtitle" in table.column_names:
        sub = table["subtitle"].combine_chunks()
        transcribed = _made(made, "subtitle", sub)
        speech = pc.and_(pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(sub), ""), False), transcribed)
        spoken_count = int(pc.sum(pc.cast(speech, pa.int64())).as_py() or 0)
        done = int(pc.sum(pc.cast(transcribed, pa.int64())).as_py() or 0)
        stats.speech["speech"] += spoken_count
        stats.speech["no speech"] += done - spoken_count
        stats.speech["not transcribed"] += n - done
    else:
        stats.speech["not transcribed"] += n
    if "subtitle_language" in table.column_names:
        lang = pc.fill_null(table["subtitle_language"].combine_chunks().filter(speech), "")
        for value, count in _counts(lang).items():
            label = value or "(unknown)"
            languages[label] = languages.get(label, 0) + count
    for name in CAPTION_FIELDS:
        if name in table.column_names:
            column = table[name].combine_chunks()
            ran = _made(made, name, column)
            if pc.any(ran).as_py():
                _add_captions(stats.captions.setdefault(name, CaptionStats()), column.filter(ran))
    if "provenance" in table.column_names:
        for text, count in _counts(table["provenance"].drop_null()).items():
            for fld, label in provenance_labels(text).items():
                per = stats.provenance.setdefault(fld, {})
                per[label] = per.get(label, 0) + count


def _provenance_keys(table: pa.Table) -> list[frozenset[str]] | None:
    """The fields each row's provenance has a record for (None without a provenance column)."""
    if "provenance" not in table.column_names:
        return None
    return [frozenset() if text is None else _record_keys(text) for text in table["provenance"].to_pylist()]


def _made(made: list[frozenset[str]] | None, name: str, column: pa.Array) -> pa.Array:
    """Rows whose ``name`` a stage (or an import) produced; without provenance, its non-null rows."""
    if made is None:
        return pc.is_valid(column)
    return pa.array([name in keys for keys in made], pa.bool_())


def _record_keys(text: str) -> frozenset[str]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return frozenset()
    return frozenset(record) if isinstance(record, dict) else frozenset()


def _add_captions(acc: CaptionStats, column: pa.Array) -> None:
    present = column.drop_null()
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        texts = pc.list_flatten(present)
        parents = pc.list_parent_indices(present).to_numpy()
    else:
        texts = present.cast(pa.string())
        parents = np.arange(len(present))
    words = word_counts(texts)
    nonempty = words > 0
    per_row = np.bincount(parents[nonempty], minlength=len(present))
    acc.rows += len(present)
    acc.empty_rows += int((per_row == 0).sum())
    acc.captions += int(nonempty.sum())
    acc.words = _add_bins(acc.words, words[nonempty])


def word_counts(texts: pa.Array) -> np.ndarray:
    """Whitespace-separated words of each string (nulls count 0), computed column-wise."""
    if len(texts) == 0:
        return np.zeros(0, np.int64)
    trimmed = pc.fill_null(pc.utf8_trim_whitespace(texts), "")
    n = pc.list_value_length(pc.utf8_split_whitespace(trimmed)).to_numpy(zero_copy_only=False)
    n = n.astype(np.int64)
    n[pc.equal(trimmed, "").to_numpy(zero_copy_only=False)] = 0  # "" splits into one empty word
    return n


def _add_bins(acc: np.ndarray, values: np.ndarray) -> np.ndarray:
    if len(values) == 0:
        return acc
    counts = np.bincount(values)
    if len(counts) > len(acc):
        acc = np.concatenate([acc, np.zeros(len(counts) - len(acc), np.int64)])
    acc[: len(counts)] += counts
    return acc


@lru_cache(maxsize=4096)
def provenance_labels(text: str) -> dict[str, str]:
    """Field → a short label of its provenance record: model file, weights sha256 prefix, prompt
    version; an imported field names the file it came from. Unknown record forms are shown as they are."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    if not isinstance(record, dict):
        return {}
    return {name: provenance_label(value) for name, value in record.items()}


def provenance_label(record: Any) -> str:
    """One field's provenance record in a few words (see ``provenance_labels``)."""
    if not isinstance(record, dict):
        return json.dumps(record)[:80]
    if "imported_from" in record:
        where = str(record["imported_from"]).rsplit(":", 1)[0]
        return f"imported from {PurePosixPath(where).name or where}"
    parts = []
    model = record.get("model")
    if model:
        parts.append(PurePosixPath(str(model).rstrip("/")).name or str(model))
    if record.get("weights_sha256"):
        parts.append(f"sha256 {str(record['weights_sha256'])[:8]}")
    prompt = record.get("prompt")
    if isinstance(prompt, dict) and prompt.get("name"):
        parts.append(f"prompt {prompt['name']} v{prompt.get('version')}")
    elif record.get("prompt_version") is not None:
        parts.append(f"prompt v{record['prompt_version']}")
    if record.get("stale"):
        parts.append("stale")
    return " · ".join(parts) or json.dumps(record, sort_keys=True)[:80]


def commit_times(store: OutputStore) -> list[dict[str, Any]]:
    """Per committed ledger part: its number, commit time and clips settled ok / failed (every
    commit, also those whose rows a later retry superseded: they are work that was done)."""
    raw = read_raw(store, ("commit", "time", "status"))
    if raw.num_rows == 0:
        return []
    ok = pc.cast(pc.equal(raw["status"], "ok"), pa.int64())
    failed = pc.cast(pc.equal(raw["status"], "failed"), pa.int64())
    table = pa.table({"commit": raw["commit"], "time": raw["time"], "ok": ok, "failed": failed})
    per = table.group_by("commit").aggregate([("time", "max"), ("ok", "sum"), ("failed", "sum")])
    per = per.sort_by("commit")
    return [{"commit": c, "time": t, "ok": o, "failed": f} for c, t, o, f in zip(
        per["commit"].to_pylist(), per["time_max"].to_pylist(), per["ok_sum"].to_pylist(),
        per["failed_sum"].to_pylist(), strict=True)]


def infer_runs(commits: list[dict[str, Any]]) -> list[Run]:
    """Split the commits into runs where the pause between two commits is unusually long."""
    if not commits:
        return []
    times = np.array([c["time"] for c in commits], np.float64)
    gaps = np.diff(times)
    typical = float(np.median(gaps)) if len(gaps) else 0.0
    threshold = max(RUN_GAP_S, 5 * typical) if math.isfinite(typical) else RUN_GAP_S
    runs: list[Run] = []
    for i, c in enumerate(commits):
        clips = c["ok"] + c["failed"]
        if i == 0 or gaps[i - 1] > threshold or gaps[i - 1] < 0:
            runs.append(Run(c["commit"], c["commit"], c["time"], c["time"], clips))
            continue
        run = runs[-1]
        run.last_commit, run.end = c["commit"], c["time"]
        run.clips += clips
        run.after_first += clips
    return runs


def full_rows(store: OutputStore, chosen: pa.Table) -> list[dict[str, Any]]:
    """The complete ledger rows (message, source, stage…) of ``chosen`` effective rows, in order,
    reading only the ledger parts of their commits."""
    wanted: dict[int, set[tuple[str, str]]] = {}
    ids = list(zip(chosen["commit"].to_pylist(), chosen["key"].to_pylist(), chosen["input"].to_pylist(),
                   strict=True))
    for commit, key, where in ids:
        wanted.setdefault(commit, set()).add((key, where))
    found: dict[tuple[int, str, str], dict[str, Any]] = {}
    for commit, pairs in wanted.items():
        with store.open(f"ledger/part-{commit:06d}.parquet") as f:
            part = pq.read_table(f)
        keys = pa.array([k for k, _ in pairs], pa.string())
        for row in part.filter(pc.is_in(part["key"], keys)).to_pylist():
            if (row["key"], row["input"]) in pairs:
                found[(commit, row["key"], row["input"])] = row
    return [found[i] for i in ids if i in found]


def failure_examples(store: OutputStore, ledger: pa.Table,
                     per_class: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Per error class, the full ledger rows of its first ``per_class`` failures (commit order)."""
    failed = ledger.filter(pc.equal(ledger["status"], "failed"))
    out = {}
    for cls in _counts(failed["error_class"]):
        out[cls] = full_rows(store, failed.filter(pc.equal(failed["error_class"], cls)).slice(0, per_class))
    return out
