"""Read the user's input files into requests: one per line or row, each one clip or one whole video.

Accepted files:
- ``.txt`` (any other suffix too): ``SOURCE [START END]`` per line, SOURCE being a YouTube id, a
  YouTube or other http(s) URL, a local path (relative paths are taken from the input file's
  folder) or a ``file://`` URL; START/END in seconds or ``[HH:]MM:SS(.mmm)``; blank lines and
  ``#`` comments are ignored.
- ``.csv``, ``.jsonl``, ``.parquet``, ``.json`` (a list of records, or ``{id: record}``): columns
  ``video_id`` or ``url`` (or both), optional ``start``/``end``; every other column is passed
  through into the sample's json (``meta``). VAST-27M and HD-VILA annotation records are read in
  every released form: the span from ``begin_s``/``end_s``, ``begin_t``/``end_t``,
  ``span_start``/``span_end`` or a ``clip_span``/``span`` list; a clip id ``YOUTUBEID.N`` (``id``
  or ``clip_id``) names its video when no URL does; an HD-VILA video record's ``clip`` list gives
  one request per clip; ``vision_cap``, ``audio_cap``, ``subtitle``, ``vast_cap`` become the
  sample's annotations (the annotation stages skip what is present). A record whose captions
  could land on a clip they do not describe (no span, a span that does not parse, spans that
  disagree, a clip id naming another video) is rejected, never cut at scene changes.

A line that cannot be understood is not an exception: it becomes a rejected row naming file and
line, committed to the ledger as ``invalid_input``. The same request twice is processed once; the
later lines are rejected as ``duplicate`` (they name the line they repeat). A file that cannot be
read as input at all (missing, not a regular file, binary, not UTF-8 where UTF-8 is required)
raises ``InputFileError``: the run is refused before any work.

Paths are handled as the OS gives them: a text file is read as bytes, and bytes that are not
UTF-8 reach the OS unchanged (``surrogateescape``); such a path travels as a ``file://`` URL
that percent-encodes its bytes (Arrow strings must be UTF-8) and ``source_path`` turns it back.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlparse

import pyarrow as pa
import pyarrow.compute as pc

from vast.pipeline.keys import YOUTUBE_ID, parse_time, request_key, sanitize, video_id_for, youtube_id
from vast.shards.schema import valid_text

YOUTUBE_WATCH = "https://www.youtube.com/watch?v={}"
_TIMELIKE = re.compile(r"^[0-9][0-9:.]*$")
# Media file suffixes, in order of preference where a file is looked up by its stem.
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg", ".wmv",
                  ".3gp", ".ogv")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_MEDIA_SUFFIXES = frozenset(VIDEO_SUFFIXES + AUDIO_SUFFIXES)

REQUEST_SCHEMA = pa.schema([
    ("request", pa.string()), ("key", pa.string()), ("input", pa.string()), ("video_id", pa.string()),
    ("source", pa.string()), ("start", pa.float64()), ("end", pa.float64()), ("meta", pa.string()),
    # annotations given with the input (a VAST-27M annotation file): null when absent, and the
    # annotation stages fill only what is missing
    ("vision_cap", pa.list_(pa.string())), ("audio_cap", pa.list_(pa.string())), ("subtitle", pa.string()),
    ("vast_cap", pa.string()), ("provenance", pa.string()),
])
ANNOTATIONS = {"vision_cap": list, "audio_cap": list, "subtitle": str, "vast_cap": str}
REJECT_SCHEMA = pa.schema([
    ("input", pa.string()), ("key", pa.string()), ("request", pa.string()), ("status", pa.string()),
    ("error_class", pa.string()), ("message", pa.string()),
])


class InputError(ValueError):
    """A malformed input line (its message names what is wrong with it)."""


class InputFileError(ValueError):
    """An input file that cannot be used at all; the run is refused before any work."""


class Requests:
    """Columnar requests plus the rejected lines, in input order.

    Rows are gathered in Python lists and moved to Arrow every ``chunk_rows`` rows, so a
    million-line input never holds a million Python strings per column at once. Duplicates are
    found in Arrow once everything is read.
    """

    def __init__(self, chunk_rows: int = 65536):
        self.chunk_rows = chunk_rows
        self._chunks: list[pa.Table] = []
        self._cols: dict[str, list[Any]] = {n: [] for n in REQUEST_SCHEMA.names}
        self._order: list[int] = []
        self._rejected: dict[str, list[Any]] = {n: [] for n in REJECT_SCHEMA.names}
        self._rejected_order: list[int] = []
        self._seq = 0
        self._result: tuple[pa.Table, pa.Table] | None = None

    def add(self, where: str, source: str, start: float, end: float, meta: dict[str, Any] | None = None,
            video_id: str | None = None, annotations: dict[str, Any] | None = None) -> None:
        """Add one request (``video_id`` defaults to one derived from the source)."""
        vid = sanitize(video_id) if video_id else video_id_for(source)
        req = request_key(vid, start, end)
        where = valid_text(where)
        c = self._cols
        c["request"].append(req)
        c["key"].append(req)
        c["input"].append(where)
        c["video_id"].append(vid)
        c["source"].append(source)
        c["start"].append(start)
        c["end"].append(end)
        c["meta"].append(json.dumps(meta, ensure_ascii=False, default=str) if meta else "{}")
        annotations = annotations or {}
        for name in ANNOTATIONS:
            c[name].append(annotations.get(name))
        c["provenance"].append(json.dumps({name: {"imported_from": where} for name in annotations})
                               if annotations else None)
        self._order.append(self._next())
        if len(self._order) >= self.chunk_rows:
            self._flush()

    def reject(self, where: str, message: str) -> None:
        """Record a malformed line as an ``invalid_input`` row."""
        r = self._rejected
        where, message = valid_text(where), valid_text(message)
        for name, value in zip(REJECT_SCHEMA.names, (where, "", "", "failed", "invalid_input", message),
                               strict=True):
            r[name].append(value)
        self._rejected_order.append(self._next())

    def _next(self) -> int:
        self._seq += 1
        self._result = None
        return self._seq

    def _flush(self) -> None:
        if self._order:
            cols = {**self._cols, "_seq": self._order}
            self._chunks.append(pa.table(cols, schema=REQUEST_SCHEMA.append(pa.field("_seq", pa.int64()))))
            self._cols = {n: [] for n in REQUEST_SCHEMA.names}
            self._order = []

    def _build(self) -> tuple[pa.Table, pa.Table]:
        if self._result is None:
            self._flush()
            schema = REQUEST_SCHEMA.append(pa.field("_seq", pa.int64()))
            every = pa.concat_tables(self._chunks) if self._chunks else schema.empty_table()
            self._chunks = [every]
            first = every.group_by("request", use_threads=False).aggregate([("_seq", "min")])
            is_first = pc.is_in(every["_seq"], value_set=first["_seq_min"])
            unique = every.filter(is_first).select(REQUEST_SCHEMA.names)
            dups = every.filter(pc.invert(is_first)).select(["input", "request", "_seq"])
            rejected = pa.table({**self._rejected, "_seq": self._rejected_order},
                                schema=REJECT_SCHEMA.append(pa.field("_seq", pa.int64())))
            if dups.num_rows:
                firsts = unique.select(["request", "input"]).rename_columns(["request", "first_input"])
                dups = dups.join(firsts, "request", use_threads=False).sort_by("_seq")
                messages = pc.binary_join_element_wise(
                    "duplicate of ", dups["first_input"], " (same clip key ", dups["request"], ")", "")
                n = dups.num_rows
                dup_rows = pa.table({
                    "input": dups["input"], "key": dups["request"], "request": dups["request"],
                    "status": pa.array(["duplicate"] * n), "error_class": pa.array([""] * n),
                    "message": messages, "_seq": dups["_seq"]}, schema=rejected.schema)
                rejected = pa.concat_tables([rejected, dup_rows]).sort_by("_seq")
            self._result = (unique, rejected.drop_columns(["_seq"]))
        return self._result

    def table(self) -> pa.Table:
        """The distinct requests, first occurrence of each, in input order."""
        return self._build()[0]

    def rejected_table(self) -> pa.Table:
        """Malformed lines (``invalid_input``) and repeated requests (``duplicate``), in input order."""
        return self._build()[1]


def resolve_source(text: str, base: Path) -> tuple[str, str | None]:
    """A YouTube id, URL, ``file://`` URL or path → (URL or absolute path, YouTube id or None).

    A local path whose bytes are not UTF-8 comes back as a ``file://`` URL (see ``source_text``).
    """
    text = text.strip()
    if not text:
        raise InputError("empty source")
    if "\x00" in text:
        raise InputError("the source holds a NUL byte, which no path or URL can hold")
    base_s = str(base)
    # the common case first, cheaply: a bare YouTube id (unless a file of that name is beside us)
    if YOUTUBE_ID.match(text) and not os.path.exists(os.path.join(base_s, text)):
        return YOUTUBE_WATCH.format(text), text
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        if not urlparse(text).hostname:
            raise InputError(f"URL without a host: {text!r}")
        if not text.isascii():  # raw bytes that are not UTF-8 are percent-encoded, as a browser does
            text = quote(text.encode("utf-8", "surrogateescape"), safe="!#$%&'()*+,/:;=?@[]~")
        return text, youtube_id(text)
    if scheme == "file":
        path = os.fsdecode(unquote_to_bytes(urlparse(text).path))
        if not path.startswith("/"):
            raise InputError(f"file:// URL must hold an absolute path: {text!r}")
        return source_text(os.path.normpath(path)), None
    if len(scheme) > 1:  # a one-letter scheme is a Windows drive, which we treat as a path below
        raise InputError(f"unsupported URL scheme {scheme!r} in {text!r} (use http(s), file:// or a path)")
    path = os.path.expanduser(text)
    looks_like_path = "/" in text or os.path.splitext(text)[1].lower() in _MEDIA_SUFFIXES
    if not looks_like_path and not os.path.exists(os.path.join(base_s, path)):
        raise InputError(f"{text!r} is not a YouTube id (11 characters), an http(s) URL or a media path")
    return source_text(os.path.abspath(os.path.join(base_s, path))), None


def source_text(path: str) -> str:
    """The ``source`` of an absolute local path: the path, or a ``file://`` URL when it is not UTF-8."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return "file://" + quote(path.encode("utf-8", "surrogateescape"), safe="/")


def source_path(source: str) -> str:
    """The OS path of a local ``source`` (inverse of ``source_text``); URLs come back unchanged."""
    if source.startswith("file://"):
        return os.fsdecode(unquote_to_bytes(urlparse(source).path))
    return source


def _span(start: Any, end: Any) -> tuple[float, float]:
    """Validate a (start, end) pair given as strings/numbers/None; NaN, NaN for none."""
    missing = [v is None or (isinstance(v, float) and math.isnan(v)) or v == "" for v in (start, end)]
    if all(missing):
        return math.nan, math.nan
    if any(missing):
        raise InputError("START and END must be given together")
    try:
        s = parse_time(str(start)) if not isinstance(start, (int, float)) else float(start)
        e = parse_time(str(end)) if not isinstance(end, (int, float)) else float(end)
    except ValueError as err:
        raise InputError(f"bad time: {err}") from None
    if not (math.isfinite(s) and math.isfinite(e)) or s < 0:
        raise InputError(f"times must be finite and ≥ 0, got {start!r} {end!r}")
    if e <= s:
        raise InputError(f"END ({end}) must be after START ({start})")
    return s, e


def _read_text(path: Path, out: Requests) -> None:
    base = path.parent
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
        if _looks_binary(head):
            raise InputFileError(
                f"{valid_text(str(path))} is not a text file (mostly control or undecodable bytes in its "
                f"first {_SNIFF_BYTES // 1024} KiB): an ids file holds one SOURCE [START END] per line in "
                "UTF-8; records go in .csv, .jsonl, .json or .parquet files")
        f.seek(0)
        for lineno, raw_bytes in enumerate(f, 1):
            # bytes that are not UTF-8 stay the bytes they were (a file name as the OS spells it)
            raw = raw_bytes.decode("utf-8", "surrogateescape")
            line = raw.strip().lstrip("\ufeff") if lineno == 1 else raw.strip()
            if not line or line.startswith("#"):
                continue
            hash_at = line.find(" #")
            if hash_at >= 0:
                line = line[:hash_at].rstrip()
            where = f"{path}:{lineno}"
            try:
                parts = line.rsplit(None, 2)
                start = end = None
                if len(parts) == 3 and _TIMELIKE.match(parts[1]) and _TIMELIKE.match(parts[2]):
                    text, start, end = parts
                elif len(parts) >= 2 and _TIMELIKE.match(parts[-1]):
                    raise InputError("a span needs both START and END")
                else:
                    text = line
                s, e = _span(start, end)
                source, vid = resolve_source(text, base)
                out.add(where, source, s, e, video_id=vid)
            except InputError as err:
                out.reject(where, f"{err} in line {raw.rstrip()[:300]!r}")


_SNIFF_BYTES = 8192


def _looks_binary(head: bytes) -> bool:
    """More than a tenth undecodable bytes or control characters (NUL included): not a text file.

    A stray NUL or Latin-1 name is one bad line (``invalid_input``) or a name as the OS spells it;
    random bytes, UTF-16 or an image are a wrong file.
    """
    text = head.decode("utf-8", "surrogateescape")
    if len(head) == _SNIFF_BYTES:
        text = text[:-3]  # the read may have cut the last character in half
    bad = sum(1 for ch in text if "\udc80" <= ch <= "\udcff" or (ch < " " and ch not in "\t\n\r\f\v"))
    return bad > len(text) / 10


# A clip id of the VAST-27M/HD-VILA releases: a YouTube id, a dot (or _) and the clip's index.
_CLIP_ID = re.compile(r"^([A-Za-z0-9_-]{11})[._](\d+)$")
# Span fields, pairs and [START, END] lists; a record may give several if they agree.
_SPAN_PAIRS = (("start", "end"), ("begin_s", "end_s"), ("span_start", "span_end"), ("begin_t", "end_t"))
_SPAN_LISTS = ("clip_span", "span")


def _add_record(out: Requests, where: str, record: dict[str, Any], base: Path) -> None:
    """One record (or, for an HD-VILA video record, each entry of its ``clip`` list) as a request."""
    clips = record.get("clip")
    if not isinstance(clips, list):
        _add_clip_record(out, where, record, base)
        return
    video = {k: v for k, v in record.items() if k != "clip"}
    for j, clip in enumerate(clips):
        here = f"{where}.clip[{j}]"
        try:
            if not isinstance(clip, dict):
                raise InputError(f"a clip entry must be an object, got {clip!r}"[:300])
            _add_clip_record(out, here, {**video, **clip}, base)
        except InputError as err:
            out.reject(here, str(err))


def _add_clip_record(out: Requests, where: str, record: dict[str, Any], base: Path) -> None:
    rec = {k: v for k, v in record.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
    url, vid = rec.pop("url", None), rec.pop("video_id", None)
    clip_id = rec.get("clip_id", rec.get("id"))  # kept in meta: the export gives it back
    named = _CLIP_ID.match(str(clip_id)) if clip_id is not None else None
    named_video = named.group(1) if named else None
    try:
        start, end = _record_span(rec)
        annotations = _record_annotations(rec)
        if not url and not vid and not named_video:
            raise InputError(f"needs a 'video_id' or 'url' column, or a clip id 'YOUTUBEID.N', "
                             f"got {sorted(record)}")
        source, yt = resolve_source(str(url or vid or named_video), base)
        vid = vid or yt or named_video
        if named_video and named_video not in (yt, vid):  # captions would land on another video's clip
            raise InputError(f"clip id {clip_id!r} names video {named_video} but the record's source is "
                             f"{url or vid}")
        if math.isnan(start) and annotations:
            raise InputError(f"captions ({', '.join(annotations)}) without a span: they describe one clip, "
                             "but the whole video would be cut at scenes and each clip would carry them")
        if math.isnan(start) and named:
            raise InputError(f"clip id {clip_id!r} names one clip of {named_video}, "
                             "but the record has no span")
    except InputError as err:
        raise InputError(f"record {clip_id!r}: {err}" if clip_id is not None else str(err)) from None
    out.add(where, source, start, end, meta=rec or None, video_id=str(vid) if vid else None,
            annotations=annotations or None)


def _record_span(rec: dict[str, Any]) -> tuple[float, float]:
    """The span a record names (its span fields popped from ``rec``); NaN, NaN for none.

    Every form a release uses is read: ``start``/``end``, ``begin_s``/``end_s``, ``begin_t``/``end_t``,
    ``span_start``/``span_end`` and ``clip_span``/``span`` lists, in seconds or clock times. Forms
    that disagree by more than a millisecond are an error, not a choice.
    """
    spans: dict[str, tuple[float, float]] = {}
    for a, b in _SPAN_PAIRS:
        if a in rec or b in rec:
            spans[f"{a}/{b}"] = _span(rec.pop(a, None), rec.pop(b, None))
    for name in _SPAN_LISTS:
        if name in rec:
            value = rec.pop(name)
            if isinstance(value, str) and value.lstrip().startswith("["):  # a list in a CSV cell
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise InputError(f"{name} must be [START, END], got {value!r}"[:300])
            spans[name] = _span(*value)
    spans = {k: v for k, v in spans.items() if not math.isnan(v[0])}
    if not spans:
        return math.nan, math.nan
    (first, span), *others = spans.items()
    for name, other in others:
        if abs(other[0] - span[0]) > 0.0015 or abs(other[1] - span[1]) > 0.0015:
            raise InputError(f"conflicting spans: {first} {span[0]:g}-{span[1]:g} s but {name} "
                             f"{other[0]:g}-{other[1]:g} s")
    return span


def _record_annotations(rec: dict[str, Any]) -> dict[str, Any]:
    """The VAST-27M captions of a record (popped from ``rec``), type-checked."""
    annotations = {}
    for name, kind in ANNOTATIONS.items():
        if name in rec:
            value = rec.pop(name)
            if kind is list and isinstance(value, str):
                value = [value]
            strings = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
            if kind is list and not strings:
                raise InputError(f"{name} must be a list of strings, got {value!r}"[:300])
            if kind is str and not isinstance(value, str):
                raise InputError(f"{name} must be a string, got {value!r}"[:300])
            annotations[name] = list(value) if kind is list else value
    return annotations


def _read_records(path: Path, out: Requests) -> None:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(raw)
                    if not isinstance(record, dict):
                        raise InputError("a jsonl line must be an object")
                    _add_record(out, where, record, path.parent)
                except (InputError, json.JSONDecodeError) as err:
                    out.reject(where, f"{err} in line {raw.rstrip()[:200]!r}")
    elif suffix == ".json":
        with open(path, encoding="utf-8") as f:
            try:
                records = json.load(f)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}: not valid JSON ({err})") from None
        if isinstance(records, dict) and "annotations" in records:
            records = records["annotations"]
        elif isinstance(records, dict):  # {clip id: record}: the key is the record's id
            records = [{"id": k, **v} if isinstance(v, dict) and "id" not in v and "clip_id" not in v else v
                       for k, v in records.items()]
        if not isinstance(records, list):
            raise InputError(f"{path}: a .json input must hold a list of records")
        for i, record in enumerate(records):
            where = f"{path}:[{i}]"
            try:
                if not isinstance(record, dict):
                    raise InputError("a record must be an object")
                _add_record(out, where, record, path.parent)
            except InputError as err:
                out.reject(where, str(err))
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for record in reader:
                where = f"{path}:{reader.line_num}"
                try:
                    if None in record:
                        raise InputError("more fields than the header names")
                    _add_record(out, where, {k: (v if v != "" else None) for k, v in record.items()},
                                path.parent)
                except InputError as err:
                    out.reject(where, str(err))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        row = 0
        for batch in pf.iter_batches(batch_size=65536):
            for record in batch.to_pylist():
                row += 1
                where = f"{path}:row{row}"
                try:
                    _add_record(out, where, record, path.parent)
                except InputError as err:
                    out.reject(where, str(err))
    else:
        raise ValueError(f"not a record file: {path}")


def read_inputs(paths: list[str | Path]) -> Requests:
    """Parse every input file, in order; ``InputFileError`` for a file that cannot be read as input."""
    out = Requests()
    for p in paths:
        path = Path(p)
        shown = valid_text(str(path))
        if not path.exists():
            raise InputFileError(f"input file not found: {shown}")
        if not path.is_file():  # a FIFO or a device would block or never end
            raise InputFileError(f"input file {shown} is not a regular file")
        try:
            if path.suffix.lower() in (".csv", ".json", ".jsonl", ".parquet"):
                _read_records(path, out)
            else:
                _read_text(path, out)
        except UnicodeDecodeError as err:
            raise InputFileError(f"input file {shown} is not UTF-8 ({err.reason}): "
                                 "save it as UTF-8") from None
        except (InputError, OSError, csv.Error, pa.ArrowException) as err:
            raise InputFileError(f"cannot read input file {shown}: {valid_text(str(err))}") from None
    return out
