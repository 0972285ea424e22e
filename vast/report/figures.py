"""The report's plots, drawn by matplotlib as SVG text.

Each function takes numbers from ``stats.CorpusStats`` and returns one SVG document. The
``Figure`` API is used directly (no pyplot): no global figure state and no GUI backend, so it
works in a headless process and inside Ray workers alike. Text stays text in the SVG
(``svg.fonttype: none``): small files, searchable in the page; ids are salted so the output is
byte-for-byte reproducible.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from vast.report.stats import CaptionStats, Run

STYLE = {
    "svg.fonttype": "none", "svg.hashsalt": "vast-report", "font.size": 9, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "axes.axisbelow": True,
}
OK, FAILED, GREY = "#3b7dd8", "#d8553b", "#9aa3ad"
WIDTH = 5.6  # inches: two figures side by side on a laptop screen
MAX_BARS = 60


@contextmanager
def _figure(height: float = 2.8) -> Iterator[Any]:
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(STYLE):
        yield Figure(figsize=(WIDTH, height))


def _counts_axis(axis: Any) -> None:
    """Counts are whole numbers: no 0.25-clip ticks on small outputs."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return buf.getvalue()


def durations(counts: np.ndarray, bin_s: float) -> str:
    """Histogram of clip durations from counts in ``bin_s``-second bins (merged to at most 60 bars),
    from a little before the shortest clip."""
    first = max(0, int(np.flatnonzero(counts)[0]) - 2)
    counts = counts[first:]
    factor = max(1, int(np.ceil(len(counts) / MAX_BARS)))
    padded = np.concatenate([counts, np.zeros(-len(counts) % factor, counts.dtype)])
    merged = padded.reshape(-1, factor).sum(axis=1)
    edges = (first + np.arange(len(merged) + 1) * factor) * bin_s
    with _figure() as fig:
        ax = fig.subplots()
        ax.stairs(merged, edges, fill=True, color=OK, alpha=0.85)
        ax.set_xlabel("clip duration (s)")
        ax.set_ylabel("clips")
        _counts_axis(ax.yaxis)
        return _svg(fig)


def failures(errors: dict[str, int]) -> str:
    """Failed clips per error class, largest first."""
    return _labelled_bars(list(errors.items()), FAILED, "failed clips", row_inches=0.32)


def caption_words(captions: dict[str, CaptionStats]) -> str:
    """Words per caption, one outline histogram per caption field."""
    with _figure() as fig:
        ax = fig.subplots()
        for name, c in captions.items():
            if c.captions:
                ax.stairs(c.words, np.arange(len(c.words) + 1), label=f"{name} ({c.captions})", linewidth=1.6)
        ax.set_xlabel("words per caption")
        ax.set_ylabel("captions")
        _counts_axis(ax.xaxis)
        _counts_axis(ax.yaxis)
        ax.legend(frameon=False)
        return _svg(fig)


def shares(rows: dict[str, dict[str, int]]) -> str:
    """One 100 % bar per row (e.g. audio track, speech), its parts labelled with their counts."""
    colors = [OK, GREY, "#c4cad3", "#7fb069"]
    with _figure(0.55 * len(rows) + 1.0) as fig:
        ax = fig.subplots()
        for y, parts in enumerate(rows.values()):
            total = sum(parts.values()) or 1
            left = 0.0
            for i, (name, count) in enumerate(parts.items()):
                width = 100 * count / total
                ax.barh(y, width, left=left, color=colors[i % len(colors)], height=0.6)
                if width >= 20:
                    ax.text(left + width / 2, y, f"{name}\n{count}", ha="center", va="center", fontsize=8,
                            color="white")
                left += width
        ax.set_yticks(range(len(rows)), list(rows))
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of ok clips")
        ax.invert_yaxis()
        return _svg(fig)


def languages(counts: dict[str, int], top: int = 15) -> str:
    """Clips with speech per subtitle language (the ``top`` most frequent, the rest as "other")."""
    items = list(counts.items())
    if len(items) > top:
        items = items[:top] + [("other", sum(v for _, v in items[top:]))]
    return _labelled_bars(items, OK, "clips with speech", row_inches=0.3)


def _labelled_bars(items: list[tuple[str, int]], color: str, xlabel: str, row_inches: float) -> str:
    """Horizontal count bars, the first item on top, each labelled with its count."""
    names, values = [k for k, _ in items][::-1], [v for _, v in items][::-1]
    with _figure(max(1.6, row_inches * len(names) + 0.8)) as fig:
        ax = fig.subplots()
        bars = ax.barh(names, values, color=color)
        ax.bar_label(bars, padding=3)
        ax.set_xlabel(xlabel)
        _counts_axis(ax.xaxis)
        ax.margins(x=0.12)
        return _svg(fig)


def throughput(commits: list[dict[str, Any]], runs: list[Run]) -> str:
    """Clips settled over time (cumulative, from the ledger's commit times), runs shaded."""
    t0 = commits[0]["time"]
    span = commits[-1]["time"] - t0
    unit, scale = ("hours", 3600) if span > 3 * 3600 else ("minutes", 60) if span > 180 else ("seconds", 1)
    x = np.array([(c["time"] - t0) / scale for c in commits])
    ok = np.cumsum([c["ok"] for c in commits])
    failed = np.cumsum([c["failed"] for c in commits])
    with _figure() as fig:
        ax = fig.subplots()
        for i, run in enumerate(runs):
            if i % 2:
                ax.axvspan((run.start - t0) / scale, (run.end - t0) / scale, color=GREY, alpha=0.15,
                           linewidth=0)
        ax.step(x, ok + failed, where="post", color=GREY, label="settled")
        ax.step(x, ok, where="post", color=OK, label="ok")
        ax.step(x, failed, where="post", color=FAILED, label="failed")
        ax.plot(x, ok + failed, "o", color=GREY, markersize=2.5)
        ax.set_xlabel(f"{unit} since the first commit")
        ax.set_ylabel("clips (cumulative)")
        _counts_axis(ax.yaxis)
        ax.legend(frameon=False)
        return _svg(fig)


def provenance(per_field: dict[str, dict[str, int]]) -> str:
    """Samples per (field, provenance label): which model and prompt version made each field."""
    rows = [(f"{name}\n{label}", count)
            for name, labels in per_field.items() for label, count in labels.items()]
    names, values = [r[0] for r in rows][::-1], [r[1] for r in rows][::-1]
    with _figure(max(1.6, 0.45 * len(names) + 0.8)) as fig:
        ax = fig.subplots()
        bars = ax.barh(names, values, color=OK)
        ax.bar_label(bars, padding=3)
        ax.tick_params(axis="y", labelsize=7.5)
        ax.set_xlabel("samples")
        _counts_axis(ax.xaxis)
        ax.margins(x=0.12)
        return _svg(fig)
