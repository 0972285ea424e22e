"""``write_report``: ``OUT/report/index.html``, one static page, and the gallery's media beside it.

The page needs no server and fetches nothing: the plots are SVG documents inlined as data URIs
(no id clashes between figures), the gallery's mp4/flac/poster files sit in ``report/media/``
and are referenced by relative paths, and there is no script. Each figure carries the numbers it
was drawn from in a table, so what the plot shows can be read exactly (and checked).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import os
from collections.abc import Iterable
from typing import Any

from vast.report import figures
from vast.report.gallery import MEDIA_FOLDER, GalleryItem, MediaFiles, build_gallery
from vast.report.stats import DURATION_BIN_S, CorpusStats, collect, failure_examples, provenance_label
from vast.shards.store import NotAnOutput, OutputStore

DEFAULT_SAMPLES = 12
INDEX = "report/index.html"
# Sample json fields a gallery card shows, in this order, besides any other field with a provenance record.
CARD_FIELDS = ("vision_cap", "audio_cap", "subtitle", "subtitle_language", "subtitle_segments", "vast_cap")


def write_report(output: str, samples: int = DEFAULT_SAMPLES) -> str:
    """Write the report of the committed data in ``output`` (path or URL); returns the page's path or URL."""
    store = OutputStore(output, create=False)
    if not store.committed_numbers():
        raise NotAnOutput(f"{output} holds no committed ledger part (ledger/part-*.parquet): "
                          "not an output of ingest, annotate or label")
    stats, ledger = collect(store)
    examples = failure_examples(store, ledger)
    media = MediaFiles(store)
    items = build_gallery(store, ledger, samples, media)
    media.remove_stale()
    generated = dt.datetime.now(dt.UTC)
    store.write_bytes(INDEX, render(stats, examples, items, generated).encode())
    return os.path.abspath(store.path(INDEX)) if store.local else f"{store.url}/{INDEX}"


def render(stats: CorpusStats, examples: dict[str, list[dict[str, Any]]], items: list[GalleryItem],
           generated: dt.datetime) -> str:
    """The whole page as HTML text."""
    notice = f'<p class="notice">{_e(stats.notice)}</p>' if stats.notice else ""
    body = "\n".join([
        f"<header><h1>vast-pipeline report</h1><p class=\"output\">{_e(stats.output)}</p>"
        f"<p class=\"muted\">generated {generated:%Y-%m-%d %H:%M:%S} UTC from the committed ledger, "
        f"manifests and shards</p>{notice}</header>",
        _summary(stats),
        _figures(stats),
        _failures(stats, examples),
        _gallery(items),
    ])
    return (f"<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>vast-pipeline report: {_e(stats.output)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _n(value: int) -> str:
    return f'<td class="n" data-value="{int(value)}">{int(value):,}</td>'


def _time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(name: str, header: Iterable[str], rows: Iterable[str]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    return (f'<table class="data" data-table="{name}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _summary(s: CorpusStats) -> str:
    totals = [
        ("clips ok", "ok", _n(s.ok)), ("clips failed", "failed", _n(s.failed)),
        ("duplicate input lines", "duplicate_lines", _n(s.duplicate_lines)),
        ("requests", "requests", _n(s.requests)),
        ("hours of video", "hours", f'<td class="n" data-value="{s.hours:.6f}">{s.hours:.3f}</td>'),
        ("shard bytes", "bytes", f'<td class="n" data-value="{s.bytes}">{s.bytes / 2**30:.3f} GiB</td>'),
        ("shards", "shards", _n(s.shards)),
    ]
    if s.manifest_rows != s.ok:
        totals.append(("ok clips found in manifests", "manifest_rows", _n(s.manifest_rows)))
    rows = [f'<tr data-key="{key}"><th>{_e(label)}</th>{cell}</tr>' for label, key, cell in totals]
    out = ["<section id=\"summary\"><h2>Summary</h2><div class=\"row\">",
           f'<table class="data" data-table="totals"><tbody>{"".join(rows)}</tbody></table>']
    if s.runs:
        run_rows = []
        for i, r in enumerate(s.runs, 1):
            rate = r.clips_per_s
            run_rows.append(
                f"<tr><td>{i}</td><td>{r.first_commit}–{r.last_commit}</td><td>{_time(r.start)}</td>"
                f"{_n(r.clips)}<td class=\"n\">{r.end - r.start:.1f}</td>"
                f"<td class=\"n\">{'—' if rate is None else f'{rate:.2f}'}</td></tr>")
        out.append("<div>" + _table("runs", ["run", "commits", "first commit", "clips", "seconds", "clips/s"],
                                     run_rows)
                   + '<p class="muted">Runs are inferred from the ledger\'s commit times (a long pause '
                     "starts a new one); clips/s counts the clips after a run's first commit over the "
                     "time since it.</p></div>")
    if s.latest_run:
        scalars = {k: v for k, v in s.latest_run.items() if k != "stages"}
        flat = "".join(f"<tr><th>{_e(k)}</th><td class=\"n\">{_e(v)}</td></tr>" for k, v in _flatten(scalars))
        out.append(f'<div><table class="data" data-table="latest_run"><caption>latest run (summary.json)'
                   f"</caption><tbody>{flat}</tbody></table></div>")
        stages = s.latest_run.get("stages")
        if isinstance(stages, dict) and stages:
            out.append("<div>" + _stage_table(stages) + "</div>")
    out.append("</div></section>")
    return "\n".join(out)


def _stage_table(stages: dict[str, Any]) -> str:
    """The latest run's CPU per stage (``summary.json`` ``run.stages``): what a user sizes a cluster by."""
    def cell(v: Any, fmt: str, scale: float = 1.0) -> str:
        return f'<td class="n">{format(v * scale, fmt) if isinstance(v, (int, float)) else "—"}</td>'

    rows = [f"<tr><th>{_e(name)}</th>{cell(st.get('cpu_s'), '.1f')}{cell(st.get('cpu_s_per_clip'), '.3f')}"
            f"{cell(st.get('busy_s'), '.1f')}{cell(st.get('bottleneck_share'), '.0f', 100)}</tr>"
            for name, st in stages.items() if isinstance(st, dict)]
    return (_table("stages", ["stage", "CPU s", "CPU s / clip", "busy s", "bottleneck, % of wall"], rows)
            + '<p class="muted">CPU of each stage in the latest run, and the share of its wall time each '
              "stage was the bottleneck (the figures to size a cluster by).</p>")


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _figure(name: str, title: str, svg: str | None, data: str, empty: str = "", numbers: bool = False) -> str:
    """A figure with its numbers folded under it; without a plot, the ``empty`` line (and the numbers
    when ``numbers`` says they still tell something)."""
    if svg is None:
        shown = f"<details><summary>numbers</summary>{data}</details>" if numbers else ""
        return (f'<figure id="fig-{name}"><figcaption>{_e(title)}</figcaption>'
                f'<p class="empty">{_e(empty)}</p>{shown}</figure>')
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
    return (f'<figure id="fig-{name}"><figcaption>{_e(title)}</figcaption><img alt="{_e(title)}" src="{uri}">'
            f"<details><summary>numbers</summary>{data}</details></figure>")


def _figures(s: CorpusStats) -> str:
    figs = []
    nonzero = [(i, int(c)) for i, c in enumerate(s.durations) if c]
    figs.append(_figure(
        "durations", "Clip duration", figures.durations(s.durations, DURATION_BIN_S) if nonzero else None,
        _table("durations", ["seconds", "clips"],
               [f"<tr><td>{i * DURATION_BIN_S:g}–{(i + 1) * DURATION_BIN_S:g}</td>{_n(c)}</tr>"
                for i, c in nonzero]),
        "no ok clips"))
    figs.append(_figure(
        "failures", "Failures by class", figures.failures(s.errors) if s.errors else None,
        _table("failures", ["class", "clips"],
               [f"<tr><td>{_e(k)}</td>{_n(v)}</tr>" for k, v in s.errors.items()]),
        "no failures"))
    share_rows = {}
    if s.audio and sum(s.audio.values()):
        share_rows["audio track"] = s.audio
    if s.speech:
        share_rows["speech"] = s.speech
    figs.append(_figure(
        "shares", "Clips with audio and with speech", figures.shares(share_rows) if share_rows else None,
        _table("shares", ["", "part", "clips"],
               [f"<tr><td>{_e(row)}</td><td>{_e(k)}</td>{_n(v)}</tr>"
                for row, parts in share_rows.items() for k, v in parts.items()]),
        "no ok clips"))
    figs.append(_figure(
        "languages", "Subtitle languages", figures.languages(s.languages) if s.languages else None,
        _table("languages", ["language", "clips"], [f"<tr><td>{_e(k)}</td>{_n(v)}</tr>"
                                                    for k, v in s.languages.items()]),
        "no clip with speech (or no subtitle stage ran)"))
    captioned = {k: c for k, c in s.captions.items() if c.captions}
    figs.append(_figure(
        "captions", "Caption lengths per field", figures.caption_words(captioned) if captioned else None,
        _table("captions", ["field", "samples with it", "of them empty", "captions", "median words"],
               [f"<tr><td>{_e(k)}</td>{_n(c.rows)}{_n(c.empty_rows)}{_n(c.captions)}"
                f"<td class=\"n\">{_median(c.words)}</td></tr>" for k, c in s.captions.items()]),
        "every caption is empty" if s.captions else "no captions (no annotation stage ran)",
        numbers=bool(s.captions)))
    figs.append(_figure(
        "throughput", "Throughput over time", figures.throughput(s.commits, s.runs) if s.commits else None,
        _table("throughput", ["commit", "time", "ok", "failed"],
               [f"<tr><td>{c['commit']}</td><td>{_time(c['time'])}</td>{_n(c['ok'])}{_n(c['failed'])}</tr>"
                for c in s.commits]),
        "no commits"))
    figs.append(_figure(
        "provenance", "Provenance: which model and prompt made each field",
        figures.provenance(s.provenance) if s.provenance else None,
        _table("provenance", ["field", "made by", "samples"],
               [f"<tr><td>{_e(f)}</td><td>{_e(label)}</td>{_n(v)}</tr>"
                for f, labels in s.provenance.items() for label, v in labels.items()]),
        "no generated fields (no annotation stage ran)"))
    return '<section id="figures"><h2>Figures</h2><div class="grid">' + "\n".join(figs) + "</div></section>"


def _median(bins: Any) -> str:
    total = int(bins.sum())
    if total == 0:
        return "—"
    return str(int((bins.cumsum() >= (total + 1) / 2).argmax()))


def _failures(s: CorpusStats, examples: dict[str, list[dict[str, Any]]]) -> str:
    if not s.errors:
        return '<section id="failures"><h2>Failures</h2><p class="empty">no failed clips</p></section>'
    rows = []
    for cls, count in s.errors.items():
        shown = "".join(f"<li><code>{_e(r['key'] or r['input'])}</code> "
                        f"<span class=\"muted\">({_e(r['stage'])})</span><pre>{_e(r['message'])}</pre></li>"
                        for r in examples.get(cls, []))
        rows.append(f'<tr data-class="{_e(cls)}"><td>{_e(cls)}</td>{_n(count)}<td><ul>{shown}</ul></td></tr>')
    return ('<section id="failures"><h2>Failures by class, with example messages</h2>'
            + _table("failure_examples", ["class", "clips", "examples (first in commit order)"], rows)
            + "</section>")


def _gallery(items: list[GalleryItem]) -> str:
    cards = "\n".join(_ok_card(i) if i.status == "ok" else _failed_card(i) for i in items)
    n_ok = sum(i.status == "ok" for i in items)
    return (f'<section id="gallery"><h2>Gallery</h2><p class="muted">{len(items)} clips sampled by key hash '
            f"({n_ok} ok, {len(items) - n_ok} failed); the same output always shows the same clips.</p>"
            f'<div class="cards">{cards}</div></section>')


def _src(name: str) -> str:
    return _e(f"{MEDIA_FOLDER.removeprefix('report/')}/{name}")


def _ok_card(item: GalleryItem) -> str:
    s = item.sample
    media = []
    if "mp4" in item.files:
        poster = f' poster="{_src(item.files["poster"])}"' if "poster" in item.files else ""
        media.append(f'<video controls preload="metadata"{poster} src="{_src(item.files["mp4"])}"></video>')
    for error in (item.media_error, item.poster_error):
        if error:
            media.append(f'<p class="muted">{_e(error)}</p>')
    if "flac" in item.files:
        media.append(f'<audio controls preload="metadata" src="{_src(item.files["flac"])}"></audio>')
    elif not item.media_error:
        why = f": {_e(s['audio_missing'])}" if s.get("audio_missing") else ""
        media.append(f'<p class="muted">no audio{why}</p>')
    span = s.get("span") or [None, None]
    facts = [("source", s.get("url", "")), ("span", f"{span[0]}–{span[1]} s"),
             ("duration", f"{s.get('duration', 0) or 0:.2f} s"),
             ("size", f"{s.get('width')}×{s.get('height')} @ {s.get('fps')} fps"), ("shard", item.shard)]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    provenance = s.get("provenance") if isinstance(s.get("provenance"), dict) else {}
    names = [f for f in CARD_FIELDS if f in s or f in provenance]
    names += [f for f in provenance if f not in CARD_FIELDS]
    fields = "".join(_field(name, s.get(name), provenance.get(name)) for name in names)
    fields = fields or '<p class="muted">no caption fields (no annotation stage ran)</p>'
    return (f'<article class="card ok" data-status="ok" data-key="{_e(item.key)}"><h3>{_e(item.key)}</h3>'
            f'{"".join(media)}<dl>{dl}</dl>{fields}</article>')


def _field(name: str, value: Any, record: Any) -> str:
    if name == "subtitle_segments" and isinstance(value, list):
        shown = f"{len(value)} segment(s)"
    elif isinstance(value, list) and value:
        shown = "<ol>" + "".join(f"<li>{_e(v)}</li>" for v in value) + "</ol>"
    elif isinstance(value, list):
        shown = '<span class="muted">[]</span>'
    elif value is None:
        shown = '<span class="muted">absent</span>'
    elif value == "":
        shown = '<span class="muted">(empty)</span>'
    else:
        shown = _e(value)
    if record is None:
        prov = '<span class="muted">no provenance record</span>'
    else:
        prov = (f"<details><summary>{_e(provenance_label(record))}</summary>"
                f"<pre>{_e(json.dumps(record, indent=1, ensure_ascii=False))}</pre></details>")
    return (f'<div class="field" data-field="{_e(name)}"><div class="name"><b>{_e(name)}</b> {prov}</div>'
            f'<div class="value">{shown}</div></div>')


def _failed_card(item: GalleryItem) -> str:
    r = item.ledger
    facts = [("input", item.input), ("source", r.get("source", "")), ("stage", r.get("stage", ""))]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    return (f'<article class="card failed" data-status="failed" data-key="{_e(item.key)}" '
            f'data-class="{_e(r.get("error_class", ""))}"><h3>{_e(item.key or item.input)}</h3>'
            f'<p class="class">failed: <b>{_e(r.get("error_class", ""))}</b></p>'
            f'<pre class="message">{_e(r.get("message", ""))}</pre><dl>{dl}</dl></article>')


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1280px;padding:0 20px 40px;color:#1d2430}
h1{margin:18px 0 2px}h2{border-bottom:1px solid #d5dbe3;padding-bottom:4px;margin-top:28px}
.output{font-family:ui-monospace,monospace;margin:0}.muted{color:#6b7480;font-size:12px}
.notice{background:#fff4d6;border:1px solid #e9c46a;padding:8px 12px;border-radius:6px}
.row{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
table.data{border-collapse:collapse;font-size:13px}table.data td,table.data th{padding:3px 10px;
border-bottom:1px solid #eef1f5;text-align:left;vertical-align:top}td.n{text-align:right;
font-variant-numeric:tabular-nums}caption{text-align:left;font-weight:600;padding-bottom:4px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:18px}
figure{margin:0;border:1px solid #e3e7ee;border-radius:8px;padding:10px}figcaption{font-weight:600}
figure img{width:100%;height:auto}.empty{color:#6b7480;font-style:italic}
pre{white-space:pre-wrap;word-break:break-word;font-size:12px;margin:2px 0;background:#f6f8fa;padding:4px 6px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:16px;align-items:start}
.card{border:1px solid #e3e7ee;border-radius:8px;padding:10px;overflow:hidden}
.card.failed{border-color:#f0b6a8;background:#fff8f6}.card h3{font:600 13px ui-monospace,monospace;
margin:0 0 6px;word-break:break-all}video{width:100%;background:#000;border-radius:4px}audio{width:100%}
dl{display:grid;grid-template-columns:max-content 1fr;gap:1px 10px;font-size:12px;margin:6px 0}
dt{color:#6b7480}dd{margin:0;word-break:break-all}.class b{color:#b23a1e}
.field{font-size:12px;border-top:1px solid #eef1f5;padding:4px 0}.field .name{color:#4a5563;font-size:11px}
.field .name b{color:#1d2430;font:600 12px ui-monospace,monospace;margin-right:6px}
.field details{display:inline}.field summary{display:inline;cursor:pointer}
.field ol{margin:2px 0;padding-left:18px}
"""
