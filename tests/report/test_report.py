"""``vast-pipeline report`` on a real ingest output (real Ray, yt-dlp over HTTP, ffmpeg, decord):
the page parses, its numbers equal the ledger's and the manifests', its media equal the shards'
members (read back with plain webdataset), it works on an fsspec URL, and a real headless
Chromium renders it without console errors or network fetches, every gallery video loaded."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from tests.report.htmlpage import Page
from vast.cli import main
from vast.report.page import write_report
from vast.shards.ledger import read_ledger, read_raw
from vast.shards.store import OutputStore
from vast.shards.summary import summarize

pytestmark = pytest.mark.slow

FAST = ["--stages.fetch.options.retries", "1", "--stages.fetch.options.backoff_s", "0.01",
        "--stages.fetch.options.backoff_max_s", "0.02"]


@dataclass
class Corpus:
    output: Path
    printed: str

    @property
    def index(self) -> Path:
        return self.output / "report" / "index.html"

    def page(self) -> Page:
        return Page(self.index.read_text())


def run_cli(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, media_root, http_server) -> Corpus:
    """Ok clips (a span, a scene-cut video, a silent whole file) and failures of four classes and a
    duplicate line, ingested with ``--report``."""
    d = tmp_path_factory.mktemp("report")
    ids = d / "ids.txt"
    ids.write_text("\n".join([
        f"{http_server.url('speech.mp4')} 1 6.5",
        f"{http_server.url('scenes.mp4')}",
        f"{media_root / 'tone.mp4'} 1 7",
        f"file://{media_root / 'silent.mp4'}",
        f"{http_server.url('gone.mp4')} 0 5",
        f"{media_root / 'corrupt.mp4'} 0 3",
        f"{media_root / 'audio_only.m4a'}",
        "not a video!",
        f"{media_root / 'tone.mp4'} 7 1",
        f"{media_root / 'tone.mp4'} 1 7",
    ]) + "\n")
    output = d / "out"
    printed = run_cli(["ingest", str(ids), "--config", "tiny", "--output", str(output), "--no-progress",
                       "--report", *FAST])
    return Corpus(output, printed)


def manifests(output: Path):
    return pq.read_table(sorted(str(p) for p in output.glob("shard-*.parquet")))


def tar_samples(output: Path) -> dict[str, dict]:
    urls = sorted(str(p) for p in output.glob("shard-*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)}


def cells(page: Page, table: str) -> dict[str, int]:
    """A two-column data table as {first cell text: number}."""
    return {r.texts()[0]: int(r.values()[-1]) for r in page.table(table)}


def test_ingest_prints_the_report_path_and_the_page_parses(corpus):
    assert f"report   {corpus.index.resolve()}" in corpus.printed.splitlines()
    page = corpus.page()
    assert page.errors == []
    assert {"totals", "durations", "failures", "shares", "throughput", "failure_examples"} <= set(page.tables)
    assert all(src.startswith(("data:image/svg+xml;base64,", "media/")) for tag, a in page.media
               for src in [a.get("src", "")] if tag == "img")


def test_figures_equal_the_ledger_and_manifest_counts(corpus):
    store = OutputStore(str(corpus.output))
    ledger = read_ledger(store)
    page = corpus.page()
    totals = {r.attrs["data-key"]: float(r.values()[-1]) for r in page.table("totals")}
    reference = summarize(store)
    assert totals["ok"] == reference["clips"]["ok"] == 7
    assert totals["failed"] == reference["clips"]["failed"] == 5
    assert totals["duplicate_lines"] == reference["duplicate_lines"] == 1
    assert totals["shards"] == reference["shards"] and totals["bytes"] == reference["bytes"]
    assert math.isclose(totals["hours"], reference["hours"], abs_tol=1e-4)
    assert "manifest_rows" not in totals  # every ok clip was found in a manifest

    failed = ledger.filter(pc.equal(ledger["status"], "failed"))
    by_class = Counter(failed["error_class"].to_pylist())
    assert cells(page, "failures") == dict(by_class)
    assert set(by_class) == {"unavailable", "decode_error", "no_video_stream", "invalid_input"}
    examples = {r.attrs["data-class"]: r for r in page.table("failure_examples")}
    messages = set(failed["message"].to_pylist())
    for cls, row in examples.items():
        assert int(row.values()[1]) == by_class[cls]
        assert any(m and m.strip()[:60] in row.texts()[2] for m in messages)

    m = manifests(corpus.output)
    durations = Counter(math.floor(d / 0.5) for d in m["duration"].to_pylist())
    shown = {r.texts()[0]: int(r.values()[1]) for r in page.table("durations")}
    assert shown == {f"{b * 0.5:g}–{(b + 1) * 0.5:g}": n for b, n in sorted(durations.items())}
    has_audio = Counter(m["has_audio"].to_pylist())
    shares = {(r.texts()[0], r.texts()[1]): int(r.values()[2]) for r in page.table("shares")}
    assert shares == {("audio track", "with audio"): has_audio[True],
                      ("audio track", "without audio"): has_audio[False]}
    assert has_audio[False] == 1  # the silent clip

    raw = read_raw(store)
    per_commit = Counter(raw.filter(pc.is_in(raw["status"], pc.cast(["ok", "failed"], "string")))["commit"]
                         .to_pylist())
    shown = {int(r.texts()[0]): int(r.values()[2]) + int(r.values()[3]) for r in page.table("throughput")}
    assert {c: n for c, n in shown.items() if n} == dict(per_commit)
    assert sum(int(r.values()[3]) for r in page.table("runs")) == 12  # one run settled every clip

    # the latest run's CPU per stage, as summary.json holds it
    stages = json.loads((corpus.output / "summary.json").read_text())["run"]["stages"]
    shown = {r.texts()[0]: r.texts() for r in page.table("stages")}
    assert list(shown) == list(stages) and {"fetch", "media", "commit"} <= set(stages)
    for name, st in stages.items():
        assert shown[name][1] == f"{st['cpu_s']:.1f}" and shown[name][2] == f"{st['cpu_s_per_clip']:.3f}"
        assert shown[name][4] == f"{100 * st['bottleneck_share']:.0f}"


def test_gallery_shows_every_clip_with_the_shards_media(corpus):
    page = corpus.page()
    ledger = read_ledger(OutputStore(str(corpus.output)))
    settled = ledger.filter(pc.is_in(ledger["status"], pc.cast(["ok", "failed"], "string"))).to_pylist()
    assert len(page.cards) == len(settled) == 12  # the default sample size covers this small output
    samples = tar_samples(corpus.output)
    cards = [c for c in page.cards if c["data-status"] == "ok"]
    assert sorted(c["data-key"] for c in cards) == sorted(samples)
    for card in cards:
        sample = samples[card["data-key"]]
        media = {tag: a for tag, a in card["media"]}
        video = corpus.index.parent / media["video"]["src"]
        assert video.read_bytes() == sample["mp4"]
        assert (corpus.index.parent / media["video"]["poster"]).read_bytes()[:2] == b"\xff\xd8"  # JPEG
        if "flac" in sample:
            assert (corpus.index.parent / media["audio"]["src"]).read_bytes() == sample["flac"]
        else:
            assert "audio" not in media and "no audio" in card["text"]
    failed = {(r["key"] or r["input"]): r for r in settled if r["status"] == "failed"}
    shown = [c for c in page.cards if c["data-status"] == "failed"]
    assert len(shown) == len(failed)
    for card in shown:
        row = failed[card["data-key"]] if card["data-key"] else next(
            r for ident, r in failed.items() if not r["key"] and ident in card["text"])
        assert card["data-class"] == row["error_class"]
        assert row["message"].strip()[:80] in card["text"]


def test_the_sample_is_deterministic_by_key_hash_and_stale_media_go(corpus, tmp_path):
    output = tmp_path / "copy"
    shutil.copytree(corpus.output, output)
    first = run_cli(["report", str(output), "--samples", "5"])
    page = Page((output / "report" / "index.html").read_text())
    again = run_cli(["report", str(output), "--samples", "5"])
    assert first == again and Page((output / "report" / "index.html").read_text()).cards == page.cards
    ledger = read_ledger(OutputStore(str(output)))
    ok = ledger.filter(pc.equal(ledger["status"], "ok"))["key"].to_pylist()
    smallest = sorted(ok, key=lambda k: hashlib.blake2b(k.encode(), digest_size=8).digest())[:4]
    shown = [c["data-key"] for c in page.cards if c["data-status"] == "ok"]
    assert sorted(shown) == sorted(smallest)
    assert sum(c["data-status"] == "failed" for c in page.cards) == 1  # a quarter of 5, rounded
    media = sorted(p.name for p in (output / "report" / "media").iterdir())
    assert {Path(n).stem for n in media} == set(shown)  # the 12-clip report's other files are gone


def test_report_on_an_fsspec_url(corpus):
    fs = fsspec.filesystem("memory")
    for path in corpus.output.rglob("*"):
        rel = path.relative_to(corpus.output)
        if path.is_file() and rel.parts[0] != "report":
            fs.pipe(f"/corpus/{rel.as_posix()}", path.read_bytes())
    try:
        assert write_report("memory://corpus") == "memory://corpus/report/index.html"
        remote = Page(fs.cat("/corpus/report/index.html").decode())
        local = corpus.page()
        for table in ("totals", "failures", "durations", "shares", "failure_examples"):
            assert [r.texts() for r in remote.table(table)] == [r.texts() for r in local.table(table)], table
        assert [c["data-key"] for c in remote.cards] == [c["data-key"] for c in local.cards]
        for tag, a in local.media:
            if tag in ("video", "audio"):
                assert fs.cat(f"/corpus/report/{a['src']}") == (corpus.index.parent / a["src"]).read_bytes()
    finally:
        fs.rm("/corpus", recursive=True)


def test_manifests_missing_optional_columns_leave_their_figures_empty(corpus, tmp_path):
    output = tmp_path / "older"
    shutil.copytree(corpus.output, output, ignore=shutil.ignore_patterns("report"))
    for p in output.glob("shard-*.parquet"):
        t = pq.read_table(p)
        pq.write_table(t.drop_columns(["has_audio", "vision_cap", "audio_cap", "subtitle",
                                       "subtitle_language", "vast_cap", "provenance"]), p)
    assert write_report(str(output), samples=2)
    page = Page((output / "report" / "index.html").read_text())
    assert page.errors == [] and page.table("shares") == [] and page.table("captions") == []
    assert sum(int(r.values()[1]) for r in page.table("durations")) == 7


def test_a_damaged_output_still_gets_its_page_saying_what_is_missing(corpus, tmp_path):
    output = tmp_path / "damaged"
    shutil.copytree(corpus.output, output, ignore=shutil.ignore_patterns("report"))
    tar = sorted(output.glob("shard-*.tar"))[0]
    lost = set(pq.read_table(tar.with_suffix(".parquet"))["key"].to_pylist())
    tar.with_suffix(".parquet").unlink()
    tar.unlink()
    write_report(str(output))
    page = Page((output / "report" / "index.html").read_text())
    totals = {r.attrs["data-key"]: int(float(r.values()[-1])) for r in page.table("totals")}
    assert totals["ok"] == 7 and totals["manifest_rows"] == 7 - len(lost)
    damaged = [c for c in page.cards if c["data-key"] in lost]
    assert damaged and all(f"{tar.name}: FileNotFoundError" in c["text"] and not c["media"]
                           for c in damaged)


def test_report_refuses_a_folder_that_is_no_output(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 4  # EXIT_NOT_OUTPUT, as status
    assert "is not a vast-pipeline output" in capsys.readouterr().err
    (tmp_path / "empty" / "ledger").mkdir(parents=True)
    assert main(["report", str(tmp_path / "empty")]) == 4
    assert "no committed ledger part" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()


def test_annotate_report_shows_which_model_and_prompt_made_each_field(corpus, tmp_path):
    from vast.captioners.tiny_lm import write_tiny_lm, write_tiny_whisper

    whisper, lm = write_tiny_whisper(tmp_path / "models"), write_tiny_lm(tmp_path / "models")
    again = tmp_path / "annotated"
    printed = run_cli([
        "annotate", str(corpus.output), str(again), "--config", "demo", "--stage", "subtitle",
        "--stage", "fusion", "--no-progress", "--report", "--stages.subtitle.options.model", str(whisper),
        "--stages.subtitle.options.backend", "openai", "--stages.fusion.options.model", str(lm),
        "--stages.fusion.options.prompt", "omni-v1",
        "--ray.num_cpus", "2", "--ray.object_store_mb", "400"])
    index = again / "report" / "index.html"
    assert f"report   {index.resolve()}" in printed.splitlines()
    page = Page(index.read_text())
    assert page.errors == []

    m = manifests(again)
    records = [json.loads(p) for p in m["provenance"].to_pylist()]
    expected = Counter()
    for rec in records:
        for fld, r in rec.items():
            prompt = (r.get("prompt") or {}).get("name")
            expected[(fld, Path(r["model"]).name, r["weights_sha256"][:8], prompt)] += 1
    shown = Counter()
    for row in page.table("provenance"):
        fld, label, n = row.texts()[0], row.texts()[1], int(row.values()[2])
        match = [k for k in expected if k[0] == fld and k[1] in label and f"sha256 {k[2]}" in label
                 and (k[3] is None or f"prompt {k[3]} " in label)]
        assert len(match) == 1, (fld, label)
        shown[match[0]] += n
    assert shown == expected
    assert {k[0] for k in expected} >= {"subtitle", "subtitle_language", "subtitle_segments", "vast_cap"}

    subtitles = m["subtitle"].to_pylist()
    speech = [s for s in subtitles if s.strip()]
    shares = {r.texts()[1]: int(r.values()[2]) for r in page.table("shares") if r.texts()[0] == "speech"}
    assert shares == {"speech": len(speech), "no speech": len(subtitles) - len(speech), "not transcribed": 0}
    languages = Counter(lang or "(unknown)" for s, lang in zip(subtitles, m["subtitle_language"].to_pylist(),
                                                              strict=True) if s.strip())
    assert cells(page, "languages") == dict(languages)
    captions = {r.texts()[0]: [int(v) for v in r.values()[1:4]] for r in page.table("captions")}
    caps = m["vast_cap"].to_pylist()
    nonempty = sum(bool(c.split()) for c in caps)
    assert captions["vast_cap"] == [len(caps), len(caps) - nonempty, nonempty]
    fused = next(c for c in page.cards if c["data-status"] == "ok")
    assert "omni-v1" in fused["text"] and Path(lm).name in fused["text"]


def chromium(user_data: Path):
    """Debian's Chromium, headless, through Debian's chromedriver (installed by scripts/setup.sh --test)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("chromium and chromedriver are missing: run scripts/setup.sh --test")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", f"--user-data-dir={user_data}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_a_headless_chromium_renders_the_page_and_loads_every_video(corpus, tmp_path):
    driver = chromium(tmp_path / "profile")
    try:
        driver.get(corpus.index.resolve().as_uri())
        states: list = []
        deadline = time.time() + 60
        while time.time() < deadline:
            states = driver.execute_script(
                "return [...document.querySelectorAll('#gallery video, #gallery audio')]"
                ".map(m => [m.tagName, m.readyState, m.error && m.error.message])")
            if states and all(s[1] >= 1 for s in states):
                break
            time.sleep(0.25)
        shot = driver.execute_cdp_cmd("Page.captureScreenshot",
                                      {"format": "png", "captureBeyondViewport": True})
        (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
        images = driver.execute_script(
            "return [...document.images].map(i => [i.complete, i.naturalWidth, i.src.slice(0, 40)])")
        console = driver.get_log("browser")
        requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    finally:
        driver.quit()
    assert (tmp_path / "report.png").stat().st_size > 10_000
    videos = [s for s in states if s[0] == "VIDEO"]
    assert len(videos) == 7 and all(s[1] >= 1 and s[2] is None for s in states), states  # HAVE_METADATA
    assert images and all(complete and width > 0 for complete, width, _ in images), images
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == []
    sent = [r["params"] for r in requests if r["method"] == "Network.requestWillBeSent"]
    ours = [p["request"]["url"] for p in sent if p.get("documentURL", "").startswith("file://")]
    assert ours and all(u.startswith(("file://", "data:")) for u in ours), ours  # no network fetch
    assert not [p["request"]["url"] for p in sent if p["request"]["url"].startswith(("http:", "https:"))]
