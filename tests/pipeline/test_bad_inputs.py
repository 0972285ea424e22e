"""One bad input, one class, whatever the transport: every bad input of README's table is fed from a
local path, by direct GET and through yt-dlp (section downloads for spans), through real Ray,
yt-dlp against tests/httpserver.py, ffmpeg and decord; the ledger's classes must agree with each
other and with the table."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
import webdataset as wds

from tests.httpserver import RangeHTTPServer
from vast.cli import main
from vast.pipeline.config import load_config
from vast.pipeline.ingest import ingest
from vast.shards.ledger import read_ledger
from vast.shards.store import OutputStore

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NO_RETRY = {"stages.fetch.options.retries": 0, "stages.fetch.options.max_bytes": 3 * 2**20,
            "stages.fetch.options.download_timeout_s": 5.0, "progress": False}
# README row → (what the local line names, what the URL names), None where the transport has none;
# names are files of the `bad` fixture, "!..." a line form of its own
CASES: dict[str, tuple[str | None, str | None]] = {
    "a NUL byte in the source": ("!nul", "!nul"),
    "END not after START": ("!backwards", "!backwards"),
    "a FIFO, a socket, a device (`/dev/zero`) or a directory": ("!special", None),
    "a missing file, HTTP 404": ("missing.mp4", "missing.mp4"),
    "a 0-byte file": ("empty.mp4", "empty.mp4"),
    "random bytes": ("noise.mp4", "noise.mp4"),
    "audio only": ("audio.m4a", "audio.m4a"),
    "bigger than `max_bytes`": ("big.mp4", "big.mp4"),
    "a response that never ends": (None, "endless.mp4"),
    "bytes still arriving after `download_timeout_s`": (None, "trickle.mp4"),
    "a span starting after the end of the source": ("after.mp4 20 25", "after.mp4 20 25"),
    "a span ending past the end by more than `end_slack_s`": ("partly.mp4 6 12", "partly.mp4 6 12"),
    "a span ending past the end by at most `end_slack_s`": ("slack.mp4 5 8.06", "slack.mp4 5 8.06"),
    "the same line twice": ("twice.mp4 1 3", "twice.mp4 1 3"),
}


def readme_table() -> dict[str, tuple[str | None, str | None]]:
    """README's table of bad inputs: row → (local outcome, http outcome); None for "—"."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| bad input | local path | over http(s) |"):]
    table = table[:table.index("\n\n")]

    def outcome(cell: str) -> str | None:
        cell = cell.strip()
        if cell == "—":
            return None
        if cell.startswith("ok"):
            return "ok"
        exit_code = re.search(r"exit (\d)", cell)
        return f"exit {exit_code.group(1)}" if exit_code else cell.strip("`")

    rows = {}
    for line in table.splitlines()[2:]:
        label, local, http = (c.strip() for c in line.strip().strip("|").split("|"))
        rows[label] = (outcome(local), outcome(http))
    return rows


@pytest.fixture(scope="module")
def bad(media_root: Path) -> Path:
    folder = media_root / "bad"
    folder.mkdir(exist_ok=True)
    for name in ("after.mp4", "partly.mp4", "slack.mp4", "twice.mp4"):
        shutil.copy(media_root / "tone.mp4", folder / name)  # 8 s
    shutil.copy(media_root / "audio_only.m4a", folder / "audio.m4a")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "noise.mp4").write_bytes(random.Random(1).randbytes(200_000))
    (folder / "big.mp4").write_bytes(random.Random(2).randbytes(4 * 2**20))  # over NO_RETRY's max_bytes
    return folder


@pytest.fixture(scope="module")
def served(http_server: RangeHTTPServer, bad: Path) -> RangeHTTPServer:
    http_server.stream("bad/endless.mp4", b"\0" * 65536)
    # ~20 KB/s: the download outlasts download_timeout_s without ever stalling
    http_server.stream("bad/trickle.mp4", (bad / "slack.mp4").read_bytes(), piece=1024, interval_s=0.05,
                       endless=False)
    return http_server


@pytest.fixture
def special(tmp_path: Path):
    """A FIFO nobody writes to, a bound socket's path, /dev/zero and a media name for it, a folder."""
    fifo, folder, zero = tmp_path / "pipe.mp4", tmp_path / "folder.mp4", tmp_path / "zero.mp4"
    os.mkfifo(fifo)
    folder.mkdir()
    zero.symlink_to("/dev/zero")
    short = tempfile.mkdtemp(prefix="vs-")  # a socket's path must stay under 108 bytes
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.path.join(short, "s.mp4"))
        yield [str(fifo), os.path.join(short, "s.mp4"), "/dev/zero", str(zero), str(folder)]
    shutil.rmtree(short)


def write_ids(path: Path, lines: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Write the lines; returns README row → the inputs ("file:line") fed for it."""
    path.write_bytes(b"".join(text.encode("utf-8", "surrogateescape") + b"\n" for _, text in lines))
    inputs: dict[str, list[str]] = {}
    for n, (label, _) in enumerate(lines, 1):
        inputs.setdefault(label, []).append(f"{path}:{n}")
    return inputs


def lines_for(label: str, spec: str, source: str, special: list[str]) -> list[tuple[str, str]]:
    """The ids lines of one case; ``source`` is the folder path or URL prefix the names are under."""
    if spec == "!nul":
        return [(label, f"{source}/nul\0name.mp4")]
    if spec == "!backwards":
        return [(label, f"{source}/slack.mp4 7 1")]
    if spec == "!special":
        return [(label, path) for path in special]
    name, *span = spec.split()
    line = " ".join([f"{source}/{name}", *span])
    return [(label, line)] * (2 if label == "the same line twice" else 1)


def outcomes(output: Path, inputs: dict[str, list[str]]) -> dict[str, list[str]]:
    """README row → the outcome of each input fed for it (of a repeated line, the repeat's)."""
    rows = {}
    for r in read_ledger(OutputStore(str(output))).to_pylist():
        rows[r["input"]] = r
    seen = {}
    for label, fed in inputs.items():
        if label == "the same line twice":
            fed = fed[1:]
        seen[label] = [_outcome(rows[i]) for i in fed]
    return seen


def _outcome(row: dict) -> str:
    return {"ok": "ok", "duplicate": "duplicate"}.get(row["status"], row["error_class"])


def config(output: Path, **overrides):
    return load_config("tiny", {"output": str(output), **NO_RETRY, **overrides})


def test_every_bad_input_gets_the_documented_class_locally_and_over_http(tmp_path, bad, served, special):
    documented = readme_table()
    assert set(documented) == set(CASES) | {"an ids file of binary garbage"}
    base = served.url("bad")
    local_lines, http_lines = [], []
    for label, (local, http) in CASES.items():
        assert (local is None, http is None) == (documented[label][0] is None, documented[label][1] is None)
        if local:
            local_lines += lines_for(label, local, str(bad), special)
        if http:
            http_lines += lines_for(label, http, base, special)

    # local paths and direct GETs in one run; yt-dlp (section downloads for spans) in another
    direct_ids, ytdlp_ids = tmp_path / "direct.txt", tmp_path / "ytdlp.txt"
    local_inputs = write_ids(direct_ids, local_lines + http_lines)
    http_inputs = {label: fed[len([1 for lb, _ in local_lines if lb == label]):]
                   for label, fed in local_inputs.items()}
    local_inputs = {label: fed[:len([1 for lb, _ in local_lines if lb == label])]
                    for label, fed in local_inputs.items()}
    ytdlp_inputs = write_ids(ytdlp_ids, http_lines)
    ingest([str(direct_ids)], config(tmp_path / "direct"))
    ingest([str(ytdlp_ids)], config(tmp_path / "ytdlp", **{"stages.fetch.options.direct": False,
                                                           "stages.fetch.options.section_min_bytes": 0}))

    seen_local = outcomes(tmp_path / "direct", {k: v for k, v in local_inputs.items() if v})
    seen_direct = outcomes(tmp_path / "direct", {k: v for k, v in http_inputs.items() if v})
    seen_ytdlp = outcomes(tmp_path / "ytdlp", ytdlp_inputs)
    ledger = {r["input"]: r for out in ("direct", "ytdlp")
              for r in read_ledger(OutputStore(str(tmp_path / out))).to_pylist()}

    def said(fed: list[str]) -> list[str]:
        return [ledger[i]["message"] for i in fed]

    for label, (local, http) in documented.items():
        if label == "an ids file of binary garbage":
            continue
        if local is not None:
            assert set(seen_local[label]) == {local}, (label, seen_local[label], said(local_inputs[label]))
        if http is not None:
            assert set(seen_direct[label]) == {http}, (label, "direct", seen_direct[label],
                                                       said(http_inputs[label]))
            assert set(seen_ytdlp[label]) == {http}, (label, "yt-dlp", seen_ytdlp[label],
                                                      said(ytdlp_inputs[label]))

    # the reasons are named, and the spans within the slack last what their keys say
    for fed in local_inputs["a FIFO, a socket, a device (`/dev/zero`) or a directory"]:
        assert re.search(r" is a (FIFO|socket|character device|directory)", ledger[fed]["message"])
    for fed in http_inputs["bytes still arriving after `download_timeout_s`"]:
        assert "download_timeout_s=5" in ledger[fed]["message"]
    padded = [ledger[i] for i in local_inputs["a span ending past the end by at most `end_slack_s`"]
              + http_inputs["a span ending past the end by at most `end_slack_s`"]
              + ytdlp_inputs["a span ending past the end by at most `end_slack_s`"]]
    samples = {s["__key__"]: json.loads(s["json"]) for out in ("direct", "ytdlp")
               for s in wds.WebDataset(sorted(str(p) for p in (tmp_path / out).glob("shard-*.tar")),
                                       shardshuffle=False, empty_check=False)}
    for row in padded:
        meta = samples[row["key"]]
        assert row["key"].endswith("_5000_8060") and meta["span"] == [5.0, 8.06] and meta["duration"] == 3.06
        assert meta["num_frames"] == round(3.06 * meta["fps"])

    # an ids file that is not text refuses the run, whatever it names
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(random.Random(3).randbytes(4096))
    code = main(["ingest", str(garbage), "--config", "tiny", "--output", str(tmp_path / "refused")])
    assert code == 3 and documented["an ids file of binary garbage"] == ("exit 3", "exit 3")
    assert not (tmp_path / "refused" / "ledger").exists()
