"""A strict reading of the report page for tests: tags must balance, and the data tables, gallery
cards and media elements come out as plain Python values."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Row:
    attrs: dict[str, str]
    cells: list[dict[str, Any]] = field(default_factory=list)

    def texts(self) -> list[str]:
        return [c["text"].strip() for c in self.cells]

    def values(self) -> list[str | None]:
        return [c["value"] for c in self.cells]


class Page(HTMLParser):
    """Parses the whole page; ``errors`` lists every unbalanced tag."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tables: dict[str, list[Row]] = {}
        self.cards: list[dict[str, Any]] = []
        self.media: list[tuple[str, dict[str, str]]] = []
        self._table: str | None = None
        self._row: Row | None = None
        self._cell: dict[str, Any] | None = None
        self._card_depth: int | None = None
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed {self.stack}")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table" and "data-table" in a:
            self._table = a["data-table"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = Row(a)
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = {"tag": tag, "text": "", "value": a.get("data-value")}
            self._row.cells.append(self._cell)
        elif tag == "article":
            self._card_depth = len(self.stack)
            self.cards.append({**a, "text": "", "media": []})
        if tag in ("video", "audio", "img"):
            self.media.append((tag, a))
            if self._card_depth is not None:
                self.cards[-1]["media"].append((tag, a))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        if tag == "article":
            self._card_depth = None
        self.stack.pop()
        if tag == "table":
            self._table = None
        elif tag == "tr":
            self._row = None
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data
        if self._card_depth is not None:
            self.cards[-1]["text"] += data

    def table(self, name: str) -> list[Row]:
        """The body rows of a data table (header rows, made of ``th`` only, left out); none when the page
        has no such table (a figure without data)."""
        return [r for r in self.tables.get(name, []) if any(c["tag"] == "td" for c in r.cells)]
