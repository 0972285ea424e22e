"""Fetch stage against real yt-dlp and ffmpeg, served from 127.0.0.1 by tests/httpserver.py."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.httpserver import RangeHTTPServer
from tests.mediagen import make_corrupt, make_video
from vast.config import ConfigError
from vast.pipeline.fetch import FetchConfig, Fetcher, classify_error, clean_message, parse_rate
from vast.pipeline.keys import request_key, video_id_for
from vast.pipeline.stage import LEDGER_COLUMNS, batch_of, rows_of, stage_config

NAN = float("nan")


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    make_video(root / "short.mp4", seconds=4.0)
    make_video(root / "long.mp4", seconds=30.0)  # key frame every second (mediagen's -g 25)
    for name in ("flaky.mp4", "tiny-cap.mp4", "talk.mp4"):
        shutil.copy(root / "short.mp4", root / name)
    _make_hls_ladder(root / "ladder", heights=(180, 360, 720))
    return root


@pytest.fixture(scope="module")
def server(media: Path):
    with RangeHTTPServer(media) as srv:
        # a page whose JSON-LD says the video lasts two hours: duration known before any download
        ld = {"@context": "https://schema.org", "@type": "VideoObject", "name": "Two hour talk",
              "duration": "PT2H", "uploadDate": "2024-01-01", "description": "a long talk",
              "thumbnailUrl": srv.url("thumb.jpg"), "contentUrl": srv.url("talk.mp4")}
        (media / "talk.html").write_text(f'<html><head><title>Two hour talk</title><script type='
                                         f'"application/ld+json">{json.dumps(ld)}</script></head></html>')
        yield srv


def _make_hls_ladder(folder: Path, heights: tuple[int, ...]) -> None:
    """A master playlist with one 2-second HLS rendition per height, like a streaming site's."""
    folder.mkdir(parents=True)
    lines = ["#EXTM3U"]
    for h in heights:
        w = h * 16 // 9
        subprocess.run(["ffmpeg", "-y", "-v", "error", "-f", "lavfi", "-i", f"testsrc2=s={w}x{h}:r=25:d=2",
                        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "25",
                        "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod",
                        str(folder / f"{h}.m3u8")],
                       check=True, capture_output=True)
        lines += [f"#EXT-X-STREAM-INF:BANDWIDTH={h * 2000},RESOLUTION={w}x{h}", f"{h}.m3u8"]
    (folder / "master.m3u8").write_text("\n".join(lines) + "\n")


def request(source: str, start: float = NAN, end: float = NAN) -> dict:
    """A planned request row carrying every ledger column."""
    vid = video_id_for(source)
    key = request_key(vid, start, end)
    return {"request": key, "key": key, "input": "ids.txt:1", "video_id": vid, "source": source,
            "start": start, "end": end, "meta": "{}", "skip_keys": [], "n_clips": 1, "status": "ok",
            "error_class": "", "message": "", "stage": ""}


class Sleeps(list):
    """Records the backoff sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def fetcher(sleeps: Sleeps | None = None, **options) -> Fetcher:
    cfg = FetchConfig(**{"backoff_s": 0.01, "backoff_max_s": 0.05, **options})
    return Fetcher(cfg, sleep=sleeps if sleeps is not None else Sleeps())


def fetch_one(f: Fetcher, row: dict) -> dict:
    out = rows_of(f(batch_of([row])))
    assert len(out) == 1
    return out[0]


def ffprobe_duration(data: bytes, tmp_path: Path) -> float:
    path = tmp_path / "probe.mp4"
    path.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                          str(path)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def first_frame(args: list[str]) -> np.ndarray:
    """The first decoded frame, grey 8-bit, of an ffmpeg input spec."""
    out = subprocess.run(["ffmpeg", "-v", "error", *args, "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "gray", "-"], capture_output=True, check=True)
    return np.frombuffer(out.stdout, dtype=np.uint8).astype(np.int16)


# --- successful fetches ---------------------------------------------------------------------


@pytest.mark.parametrize(("direct", "extractor"), [(True, "http"), (False, "generic")])
def test_whole_file_over_http(server: RangeHTTPServer, media: Path, direct: bool, extractor: str):
    before = server.count("short.mp4")
    out = fetch_one(fetcher(direct=direct), request(server.url("short.mp4")))
    assert out["status"] == "ok", out["message"]
    assert out["media"] == (media / "short.mp4").read_bytes()
    assert out["media_offset"] == 0.0
    info = json.loads(out["source_info"])
    assert info["extractor"] == extractor and info["ext"] == "mp4"
    if direct:  # one GET, no yt-dlp sniffing request before it
        assert server.count("short.mp4") - before == 1
    # the probe fetch ran is handed on, so the media stage does not probe again
    assert json.loads(out["probe"])["format"]["duration"]
    assert info["section_downloaded"] is False
    # probed: a plain file URL carries no metadata
    assert info["duration"] == pytest.approx(4.0, abs=0.1)
    assert (info["width"], info["height"], info["fps"]) == (320, 240, 25.0)


def test_span_downloads_only_the_section(server: RangeHTTPServer, media: Path, tmp_path: Path):
    full = media / "long.mp4"
    # section_min_bytes=0: this small file counts as large, so only the span's section is fetched
    out = fetch_one(fetcher(section_min_bytes=0), request(server.url("long.mp4"), 10.3, 13.3))
    assert out["status"] == "ok", out["message"]
    assert len(out["media"]) < full.stat().st_size / 4
    assert ffprobe_duration(out["media"], tmp_path) == pytest.approx(3.0, abs=0.3)
    assert out["media_offset"] == pytest.approx(10.3)
    info = json.loads(out["source_info"])
    assert info["section_downloaded"] is True and info["section"] == [10.3, 13.3]
    # t=0 of the bytes is source time media_offset: the first shown frame is the source's frame there
    (tmp_path / "section.mp4").write_bytes(out["media"])
    shown = first_frame(["-i", str(tmp_path / "section.mp4")])
    at_offset = first_frame(["-ss", str(out["media_offset"]), "-i", str(full)])
    one_second_off = first_frame(["-ss", str(out["media_offset"] + 1.0), "-i", str(full)])
    assert np.abs(shown - at_offset).mean() < 1.0
    assert np.abs(shown - one_second_off).mean() > 5.0  # the comparison can tell frames apart


def test_spans_of_one_small_source_share_one_download(server: RangeHTTPServer, media: Path, tmp_path: Path):
    url = server.url("long.mp4")
    before = server.count("long.mp4")
    rows = [request(url, 1.0, 6.0), request(url, 20.0, 25.0), request(str(media / "short.mp4"), 0.0, 2.0)]
    out = rows_of(fetcher().fetch_local(batch_of(rows, LEDGER_COLUMNS), tmp_path))
    assert [r["status"] for r in out] == ["ok"] * 3 and server.count("long.mp4") - before == 1
    assert out[0]["media_path"] == out[1]["media_path"] != out[2]["media_path"]
    assert Path(out[0]["media_path"]).read_bytes() == (media / "long.mp4").read_bytes()
    assert out[0]["media_offset"] == out[1]["media_offset"] == 0.0
    assert out[2]["media_path"] == str(media / "short.mp4")  # a local file is used where it is
    assert "media" not in out[0]


def test_span_without_section_downloads_whole_file(server: RangeHTTPServer, media: Path):
    out = fetch_one(fetcher(section=False), request(server.url("short.mp4"), 1.0, 2.0))
    assert out["status"] == "ok", out["message"]
    assert out["media"] == (media / "short.mp4").read_bytes()
    assert out["media_offset"] == 0.0
    assert json.loads(out["source_info"])["section_downloaded"] is False


def test_local_path(media: Path):
    path = media / "short.mp4"
    out = fetch_one(fetcher(), request(str(path)))
    assert out["status"] == "ok", out["message"]
    assert out["media"] == path.read_bytes() and out["media_offset"] == 0.0
    info = json.loads(out["source_info"])
    assert info["extractor"] == "local" and info["duration"] == pytest.approx(4.0, abs=0.1)
    assert (info["width"], info["height"], info["fps"]) == (320, 240, 25.0)


def test_undecodable_local_file_is_still_fetched(tmp_path: Path):
    # deciding that a file is not a video is the media stage's job, with its own error class
    path = make_corrupt(tmp_path / "broken.mp4")
    out = fetch_one(fetcher(), request(str(path)))
    assert out["status"] == "ok", out["message"]
    assert out["media"] == path.read_bytes()
    assert "duration" not in json.loads(out["source_info"])


def test_height_cap_picks_best_at_or_below_else_smallest_above(server: RangeHTTPServer):
    url = server.url("ladder/master.m3u8")
    capped = json.loads(fetch_one(fetcher(max_height=360), request(url))["source_info"])
    assert capped["height"] == 360
    below_all = json.loads(fetch_one(fetcher(max_height=100), request(url))["source_info"])
    assert below_all["height"] == 180
    uncapped = json.loads(fetch_one(fetcher(max_height=4320), request(url))["source_info"])
    assert uncapped["height"] == 720


def test_temp_dirs_are_removed(server: RangeHTTPServer, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    f = fetcher(work_dir=str(work), retries=0)
    server.fail_always("nowhere.mp4", 404)
    assert fetch_one(f, request(server.url("short.mp4")))["status"] == "ok"
    assert fetch_one(f, request(server.url("nowhere.mp4")))["status"] == "failed"
    assert list(work.iterdir()) == []


# --- failures and retries -------------------------------------------------------------------


@pytest.mark.parametrize("direct", [True, False])
def test_404_is_unavailable_with_the_original_message(server: RangeHTTPServer, direct: bool):
    server.fail_always("gone.mp4", 404)
    sleeps = Sleeps()
    before = server.count("gone.mp4")
    out = fetch_one(fetcher(sleeps, direct=direct), request(server.url("gone.mp4")))
    assert (out["status"], out["error_class"], out["stage"]) == ("failed", "unavailable", "fetch")
    # yt-dlp's message, or the HTTP client's naming the URL
    assert out["message"].startswith("ERROR: [generic]" if not direct else server.url("gone.mp4"))
    assert "HTTP Error 404: Not Found" in out["message"]
    assert out["media"] == b"" and out["source_info"] == "{}"
    assert server.count("gone.mp4") - before == 1 and sleeps == []  # permanent: not retried


def test_403_fails_at_once_as_other(server: RangeHTTPServer):
    server.fail_always("forbidden.mp4", 403)
    out = fetch_one(fetcher(), request(server.url("forbidden.mp4")))
    assert (out["error_class"], server.count("forbidden.mp4")) == ("other", 1)
    assert "HTTP Error 403: Forbidden" in out["message"]


@pytest.mark.parametrize("direct", [True, False])
def test_429_twice_then_ok_after_retries(server: RangeHTTPServer, media: Path, direct: bool):
    server.fail_times("flaky.mp4", 429, 2)
    sleeps = Sleeps()
    before = server.count("flaky.mp4")
    out = fetch_one(fetcher(sleeps, retries=3, direct=direct), request(server.url("flaky.mp4")))
    assert out["status"] == "ok", out["message"]
    assert out["media"] == (media / "flaky.mp4").read_bytes()
    statuses = server.statuses("flaky.mp4")[before:]
    assert statuses[:2] == [429, 429] and set(statuses[2:]) <= {200, 206} and len(statuses) > 2
    assert len(sleeps) == 2 and all(0.0 <= s <= 0.05 for s in sleeps)


def test_permanent_429_is_rate_limited_after_retries(server: RangeHTTPServer):
    server.fail_always("busy.mp4", 429)
    sleeps = Sleeps()
    out = fetch_one(fetcher(sleeps, retries=2), request(server.url("busy.mp4")))
    assert (out["status"], out["error_class"]) == ("failed", "rate_limited")
    assert "HTTP Error 429: Too Many Requests" in out["message"]
    assert server.statuses("busy.mp4") == [429, 429, 429]
    assert len(sleeps) == 2


def test_5xx_is_network_and_retried(server: RangeHTTPServer):
    server.fail_always("down.mp4", 503)
    out = fetch_one(fetcher(retries=1), request(server.url("down.mp4")))
    assert out["error_class"] == "network"
    assert server.count("down.mp4") == 2


def test_connection_refused_is_network(server: RangeHTTPServer):
    with RangeHTTPServer(server.root) as closed:
        url = closed.url("short.mp4")
    out = fetch_one(fetcher(retries=1), request(url))
    assert out["error_class"] == "network", out["message"]
    assert "refused" in out["message"].lower()


def test_too_long_refused_before_download(server: RangeHTTPServer):
    before = server.count("talk.mp4")
    out = fetch_one(fetcher(), request(server.url("talk.html")))
    assert (out["status"], out["error_class"]) == ("failed", "too_long")
    assert "7200" in out["message"]
    # yt-dlp's extraction sniffs the file's first bytes with one GET; a download would need another
    assert server.count("talk.mp4") - before <= 1
    # the same page under a generous limit is downloaded: the refusal above was the limit's doing
    before = server.count("talk.mp4")
    ok = fetch_one(fetcher(max_source_s=10_000.0), request(server.url("talk.html")))
    assert ok["status"] == "ok", ok["message"]
    assert server.count("talk.mp4") - before >= 2


def test_too_long_local_and_span(server: RangeHTTPServer, media: Path):
    local = fetch_one(fetcher(max_source_s=2.0), request(str(media / "short.mp4")))
    assert (local["error_class"], local["media"]) == ("too_long", b"")
    # a plain file URL's duration is known only once it has arrived: refused all the same
    plain = fetch_one(fetcher(max_source_s=2.0), request(server.url("short.mp4")))
    assert (plain["error_class"], plain["media"]) == ("too_long", b"")
    before = server.count("long.mp4")
    span = fetch_one(fetcher(max_source_s=5.0), request(server.url("long.mp4"), 1.0, 7.0))
    assert span["error_class"] == "too_long"
    assert server.count("long.mp4") == before  # refused without a request
    # a short span of a source longer than the limit is fine: only the span is fetched
    ok = fetch_one(fetcher(max_source_s=5.0), request(server.url("long.mp4"), 20.0, 22.0))
    assert ok["status"] == "ok", ok["message"]


def test_bad_spans_are_invalid_input(server: RangeHTTPServer):
    backwards = fetch_one(fetcher(), request(server.url("short.mp4"), 3.0, 1.0))
    assert backwards["error_class"] == "invalid_input"
    # the page declares a two-hour video: a span after its end is refused before download
    after_end = fetch_one(fetcher(), request(server.url("talk.html"), 8000.0, 8002.0))
    assert after_end["error_class"] == "invalid_input" and "7200" in after_end["message"]


def test_too_large(server: RangeHTTPServer, media: Path):
    out = fetch_one(fetcher(max_bytes=10_000), request(server.url("tiny-cap.mp4")))
    assert out["error_class"] == "too_large", out["message"]
    local = fetch_one(fetcher(max_bytes=10_000), request(str(media / "short.mp4")))
    assert local["error_class"] == "too_large"


def test_missing_local_file_is_unavailable(tmp_path: Path):
    out = fetch_one(fetcher(), request(str(tmp_path / "nope.mp4")))
    assert (out["status"], out["error_class"], out["stage"]) == ("failed", "unavailable", "fetch")
    assert "nope.mp4" in out["message"]


def test_relative_path_is_invalid_input():
    out = fetch_one(fetcher(), request("videos/clip.mp4"))
    assert out["error_class"] == "invalid_input"


def test_batch_mixing_good_and_bad_rows(server: RangeHTTPServer, media: Path, tmp_path: Path):
    server.fail_always("missing-in-batch.mp4", 404)
    done = {**request(server.url("short.mp4")), "status": "failed", "error_class": "invalid_input",
            "message": "bad line", "stage": "plan"}
    rows = [request(server.url("short.mp4")), request(server.url("missing-in-batch.mp4")),
            request(str(tmp_path / "absent.mp4")), request(str(media / "short.mp4"), 0.5, 1.5), done]
    batch = batch_of(rows, LEDGER_COLUMNS)
    out_batch = fetcher(retries=0)(batch)
    assert list(out_batch) == [*LEDGER_COLUMNS, "media", "media_offset", "source_info", "probe"]
    assert all(len(col) == len(rows) for col in out_batch.values())
    out = rows_of(out_batch)
    assert [r["key"] for r in out] == [r["key"] for r in rows]
    assert [r["status"] for r in out] == ["ok", "failed", "failed", "ok", "failed"]
    assert [r["error_class"] for r in out] == ["", "unavailable", "unavailable", "", "invalid_input"]
    assert [r["stage"] for r in out] == ["", "fetch", "fetch", "", "plan"]
    assert out[4]["message"] == "bad line" and out[4]["media"] == b""  # earlier failure passes through
    assert out[0]["media"] == out[3]["media"] == (media / "short.mp4").read_bytes()


# --- inputs that could hang or exhaust a worker ---------------------------------------------


def finishes(fn, seconds: float = 120.0):
    """``fn()``'s result; fails the test, instead of hanging it, if ``fn`` has not returned in ``seconds``."""
    result: list = []
    worker = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"still running after {seconds:g} s: it hangs"
    return result[0]


def test_local_sources_must_be_regular_files(media: Path, tmp_path: Path):
    """A FIFO (no writer: opening it would block forever), a device that never ends, a socket and a
    folder are refused without being read; the good line of the same batch settles."""
    fifo, folder, sock_path = tmp_path / "pipe.mp4", tmp_path / "folder.mp4", tmp_path / "s.mp4"
    os.mkfifo(fifo)
    folder.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    zero_link = tmp_path / "zero.mp4"  # a media name in front of /dev/zero
    zero_link.symlink_to("/dev/zero")
    kinds = {fifo: "a FIFO (named pipe)", Path("/dev/zero"): "a character device",
             zero_link: "a character device", sock_path: "a socket", folder: "a directory"}
    rows = [request(str(p)) for p in kinds] + [request(str(media / "short.mp4"), 0.0, 2.0)]
    try:
        out = finishes(lambda: rows_of(fetcher()(batch_of(rows, LEDGER_COLUMNS))))
    finally:
        sock.close()
    for row, (path, kind) in zip(out, kinds.items(), strict=False):
        assert (row["status"], row["error_class"], row["stage"]) == ("failed", "invalid_input", "fetch")
        assert row["message"] == f"{path} is {kind}, not a regular file: a local source must be a media file"
        assert row["media"] == b""
    assert out[-1]["status"] == "ok" and out[-1]["media"] == (media / "short.mp4").read_bytes()


@pytest.mark.parametrize("direct", [True, False])
def test_a_zero_byte_source_is_empty_media_on_every_transport(server: RangeHTTPServer, media: Path,
                                                              direct: bool):
    (media / "zero-bytes.mp4").write_bytes(b"")
    local = fetch_one(fetcher(), request(str(media / "zero-bytes.mp4")))
    remote = fetch_one(fetcher(direct=direct), request(server.url("zero-bytes.mp4")))
    assert local["error_class"] == remote["error_class"] == "empty_media"
    assert local["stage"] == remote["stage"] == "fetch"
    assert local["message"] == f"{media / 'zero-bytes.mp4'} is 0 bytes"
    # a direct GET says so itself; through yt-dlp its message is kept
    assert remote["message"] == (f"{server.url('zero-bytes.mp4')} sent 0 bytes" if direct
                                 else "ERROR: Did not get any data blocks")


@pytest.mark.parametrize("direct", [True, False])
def test_an_endless_response_stops_at_max_bytes(server: RangeHTTPServer, direct: bool):
    """A body without a length that never ends (the HTTP twin of /dev/zero) is cut at max_bytes."""
    path = f"endless-{direct}.mp4"
    server.stream(path, b"\0" * 65536)
    out = finishes(lambda: fetch_one(fetcher(direct=direct, max_bytes=2**20), request(server.url(path))))
    assert (out["error_class"], out["stage"]) == ("too_large", "fetch")
    assert out["message"] == f"{server.url(path)} sent over max_bytes=1048576 bytes"
    # the server wrote what the client read, plus what socket buffers hold: a few MiB, not an endless stream
    assert 2**20 < server.bytes_sent(path) < 64 * 2**20


@pytest.mark.parametrize("mode", ["direct", "yt-dlp", "section"])
def test_a_trickling_download_times_out_as_network_and_is_retried(server: RangeHTTPServer, media: Path,
                                                                  mode: str):
    """Bytes keep coming, so no read stalls for socket_timeout_s; download_timeout_s ends the attempt
    all the same: yt-dlp's HTTP download at its next block, the ffmpeg of a section download by the
    watchdog."""
    path = f"trickle-{mode}.mp4"
    # ~80 KB/s: ffprobe reads the head (the moov box) in time, the download of the rest takes seconds
    server.stream(path, (media / "short.mp4").read_bytes(), piece=4096, interval_s=0.05, endless=False)
    options = {"direct": {}, "yt-dlp": {"direct": False}, "section": {"section_min_bytes": 0}}[mode]
    span = (1.0, 3.0) if mode == "section" else (NAN, NAN)
    sleeps = Sleeps()
    f = fetcher(sleeps, retries=1, download_timeout_s=1.0, **options)
    out = finishes(lambda: fetch_one(f, request(server.url(path), *span)))
    assert (out["error_class"], out["stage"]) == ("network", "fetch"), out["message"]
    assert out["message"].startswith(f"{server.url(path)}: download timed out after download_timeout_s=1 s")
    assert len(sleeps) == 1  # transient: tried again once
    import psutil  # no ffmpeg of the attempts is left running

    assert not [c for c in psutil.Process().children(recursive=True) if path in " ".join(c.cmdline())]


def test_a_span_after_the_end_is_refused_before_any_section_download(server: RangeHTTPServer, media: Path):
    """A plain file names no duration: fetch reads it (ffprobe, a ranged read) before a section
    download would fetch an empty section, and refuses the span as the media stage would locally."""
    f = fetcher(section_min_bytes=0)  # sections even for this small file
    out = fetch_one(f, request(server.url("long.mp4"), 40.0, 45.0))
    # refused before the download (the media stage's refusal of a downloaded file reads otherwise)
    assert (out["error_class"], out["stage"]) == ("invalid_input", "fetch")
    assert out["message"] == "span 40-45 s starts after the end of the source (it lasts 30 s)"
    # what ffprobe cannot read over HTTP is fetched whole, for the media stage to judge
    (media / "noise.mp4").write_bytes(random.Random(12).randbytes(40_000))
    whole = fetch_one(f, request(server.url("noise.mp4"), 1.0, 3.0))
    assert whole["status"] == "ok" and whole["media"] == (media / "noise.mp4").read_bytes()
    assert whole["media_offset"] == 0.0 and json.loads(whole["source_info"])["section_downloaded"] is False


# --- classification, backoff, config -------------------------------------------------------

YTDLP_MESSAGES = [
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable", "unavailable"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video has been removed by the uploader",
     "unavailable"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is no longer available because the YouTube "
     "account associated with this video has been terminated.", "unavailable"),
    ("ERROR: [generic] clip: Unable to download webpage: HTTP Error 404: Not Found (caused by "
     "<HTTPError 404: Not Found>)", "unavailable"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Private video. Sign in if you've been granted access to this video. Use "
     "--cookies-from-browser or --cookies for the authentication.", "private"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This video is private", "private"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Join this channel to get access to members-only content like this "
     "video, and other exclusive perks.", "private"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm your age. This video may be inappropriate for some "
     "users. Use --cookies-from-browser or --cookies for the authentication.", "age_restricted"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. The uploader has not made this video available in "
     "your country", "geo_blocked"),
    ("ERROR: [vimeo] 123: This video is not available from your location due to geo restriction",
     "geo_blocked"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Sign in to confirm you’re not a bot. Use --cookies-from-browser or "
     "--cookies for the authentication.", "rate_limited"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Video unavailable. This content isn’t available, try again later. The "
     "current session has been rate-limited by YouTube for up to an hour.", "rate_limited"),
    ("ERROR: unable to download video data: HTTP Error 429: Too Many Requests", "rate_limited"),
    ("ERROR: [generic] x: Unable to download webpage: <urlopen error [Errno 111] Connection refused> "
     "(caused by URLError(ConnectionRefusedError(111, 'Connection refused')))", "network"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Unable to download API page: [Errno -3] Temporary failure in name "
     "resolution", "network"),
    ("ERROR: unable to download video data: ('Connection aborted.', ConnectionResetError(104, "
     "'Connection reset by peer'))", "network"),
    ("ERROR: [generic] x: Unable to download webpage: The read operation timed out", "network"),
    ("ERROR: unable to download video data: HTTP Error 503: Service Unavailable", "network"),
    ("ERROR: Unsupported URL: https://example.com/not-a-video", "unsupported"),
    ("ERROR: [youtube] dQw4w9WgXcQ: No video formats found!", "unsupported"),
    ("ERROR: [youtube] dQw4w9WgXcQ: Requested format is not available. Use --list-formats for a list of "
     "available formats", "unsupported"),
    ("ERROR: 'not a url' is not a valid URL. Set --default-search \"ytsearch\" to search YouTube",
     "invalid_input"),
    ("ERROR: unable to download video data: HTTP Error 403: Forbidden", "other"),
    ("ERROR: Postprocessing: Conversion failed!", "other"),
]


@pytest.mark.parametrize(("message", "expected"), YTDLP_MESSAGES)
def test_classify_error(message: str, expected: str):
    assert classify_error(message) == expected


def test_ansi_colors_are_stripped_only():
    colored = "\x1b[0;31mERROR:\x1b[0m [youtube] dQw4w9WgXcQ: Private video"
    assert clean_message(colored) == "ERROR: [youtube] dQw4w9WgXcQ: Private video"
    assert classify_error(colored) == "private"


def test_backoff_is_full_jitter_capped():
    f = Fetcher(FetchConfig(backoff_s=1.0, backoff_max_s=5.0), rng=random.Random(0))
    for attempt in range(6):
        draws = [f.backoff(attempt) for _ in range(200)]
        cap = min(5.0, 2.0 ** attempt)
        assert all(0.0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap and min(draws) < 0.2 * cap  # spread over the whole range


def test_rate_limit_parsing_and_config_validation(tmp_path: Path):
    assert parse_rate("2M") == 2 * 1024**2
    assert parse_rate("500K") == 500 * 1024
    assert parse_rate("1.5MiB/s") == int(1.5 * 1024**2)
    assert parse_rate("100000") == 100000
    with pytest.raises(ConfigError, match="rate_limit"):
        FetchConfig(rate_limit="fast")
    with pytest.raises(ConfigError, match="cookies"):
        Fetcher(FetchConfig(cookies=str(tmp_path / "missing.txt")))
    cfg = stage_config("fetch", {"rate_limit": "2M", "max_height": 480, "retries": 0})
    assert isinstance(cfg, FetchConfig) and (cfg.max_height, cfg.retries) == (480, 0)
    assert math.isclose(cfg.backoff_s, 2.0)
