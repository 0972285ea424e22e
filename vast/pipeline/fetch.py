"""Fetch stage: turn a request's ``source`` (URL or local path) into a local media file.

Requests of one source in a batch (several spans of one video) are served by one download.
Plain http(s) URLs of media files (a media suffix, no cookies, proxy or rate limit configured)
are read with one GET, without yt-dlp (``direct``); other URLs go through yt-dlp's Python API
(YouTube and the ~1800 other sites it knows, one ``YoutubeDL`` per worker thread); absolute local
paths are used in place. For spans of a large source only their section is downloaded where the
source allows it (yt-dlp ``download_ranges``, ffmpeg seeking over HTTP), and ``media_offset`` says
which source time the file starts at, so the media stage cuts the right seconds. Sources longer
than ``max_source_s`` are refused before any media is downloaded where their length is known in
advance. Where fetch has to probe the file (to learn that length), ffprobe's JSON travels on in
the ``probe`` column, so the media stage does not probe it again.

Nothing a request names can hang a worker or exhaust it: a local source must be a regular file
(a FIFO, socket, device or directory is ``invalid_input``, found by ``stat`` without opening it),
and every read is bounded by ``max_bytes`` and by time — a local file by its size and ffprobe's
timeout, a download by ``socket_timeout_s`` per stall and ``download_timeout_s`` in all (yt-dlp's
HTTP downloads through a progress hook, checked at each block it reads; its ffmpeg downloads by a
watchdog). One input gives one class whatever the transport: a 0-byte file is ``empty_media``
locally, by direct GET and through yt-dlp; a span past the end is ``invalid_input`` whether the
whole file or a section of it was downloaded (see the media stage).

Run in the same worker as the media stage (the graph chains them), the file stays on local disk
and only its path is handed over (``fetch_local``); run alone, the stage returns the bytes
(``media``), which is what crosses Ray's object store. Failures become ledger rows classed from
yt-dlp's (or the HTTP client's) message (``classify_error``) with that message kept verbatim;
transient classes (``network``, ``rate_limited``) are retried with full-jitter exponential backoff.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import math
import os
import random
import re
import shutil
import stat
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar
from urllib.parse import urlparse

from vast.config import ConfigError
from vast.pipeline.inputs import AUDIO_SUFFIXES, VIDEO_SUFFIXES, source_path
from vast.pipeline.media import ffprobe
from vast.pipeline.scratch import scratch_dir
from vast.pipeline.stage import TRANSIENT_CLASSES, SampleError, Stage, batch_of, fail, rows_of
from vast.shards.schema import valid_text

log = logging.getLogger(__name__)


@dataclass
class FetchConfig:
    """How the fetch stage downloads: format cap, retries, limits, network options."""

    max_height: int = 360
    """Preferred video height cap: the best format at or below it, else the smallest above it."""
    retries: int = 3
    """Extra attempts for transient failures (``network``, ``rate_limited``); 0 = try once."""
    backoff_s: float = 2.0
    """Base of the exponential backoff between attempts: attempt k sleeps U(0, backoff_s·2^k)."""
    backoff_max_s: float = 60.0
    """Cap on one backoff sleep, in seconds."""
    socket_timeout_s: float = 30.0
    """Seconds without network progress before a connection counts as failed (``network``)."""
    cookies: str | None = None
    """Netscape cookies.txt for sites that need a login; each call reads a private copy."""
    proxy: str | None = None
    """Proxy URL for every request, e.g. ``socks5://127.0.0.1:1080``; None = direct."""
    rate_limit: str | None = None
    """Download speed cap per fetch in bytes/s: ``500K``, ``2M``, ``1.5MiB`` (1024-based); None = none."""
    section: bool = True
    """For span requests, download only the span where the source allows it (else the whole video)."""
    force_keyframes: bool = False
    """Re-encode the downloaded section so it starts exactly at the span start, not at the key
    frame before it (yt-dlp ``force_keyframes_at_cuts``): costs CPU, not needed by the media stage."""
    max_source_s: float = 3600.0
    """Whole-video requests for longer sources, and longer spans, fail as ``too_long`` before download."""
    max_bytes: int = 2**31
    """Downloads (or local files) bigger than this fail as ``too_large``: refused before download when the
    size is known in advance, else stopped once this many bytes arrived (an endless stream included)."""
    download_timeout_s: float = 1800.0
    """Wall-clock limit of one download attempt, however steadily bytes arrive (``socket_timeout_s``
    bounds each stall); over it the attempt fails as ``network`` (and is retried)."""
    work_dir: str | None = None
    """Where the per-fetch temporary folders go (each removed after its fetch). An ingest run puts its
    run folder here (see README "Resume, crashes and retries"); None: the output's ``.staging`` (local
    outputs) or the system temp dir."""
    direct: bool = True
    """Read plain http(s) URLs of media files (``.mp4``, ``.webm``, ``.m4a`` …) with one GET, without
    yt-dlp, unless ``cookies``, ``proxy`` or ``rate_limit`` is set; a page answered instead of media
    goes to yt-dlp after all."""
    section_min_bytes: int = 32 * 2**20
    """Direct sources up to this size are downloaded whole even for spans (one download serves all
    their spans); larger ones get section downloads (see ``section``)."""

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"fetch.retries must be ≥ 0, got {self.retries}")
        if min(self.max_height, self.max_bytes, self.max_source_s, self.download_timeout_s) <= 0:
            raise ConfigError("fetch.max_height, max_bytes, max_source_s and download_timeout_s must be "
                              "positive")
        if self.rate_limit is not None:
            parse_rate(self.rate_limit)  # fail at config time, not in the middle of a run


_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?(?:/s)?$", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """Bytes per second from ``"2M"``, ``"500K"``, ``"1.5MiB/s"``, ``"100000"`` (1024-based, like yt-dlp)."""
    m = _RATE.match(text.strip())
    if not m:
        raise ConfigError(f"fetch.rate_limit: cannot read {text!r} as a rate; use e.g. 500K, 2M, 1.5MiB")
    number, unit = float(m.group(1)), m.group(2).lower()
    value = number * 1024 ** ("kmgt".index(unit) + 1) if unit else number
    if value < 1:
        raise ConfigError(f"fetch.rate_limit must be at least 1 byte/s, got {text!r}")
    return int(value)


# --- error classification -------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Checked in order: the first match wins. Order matters where YouTube stacks phrases, e.g.
# "Video unavailable. This video is private" is private, "Video unavailable. The uploader has not
# made this video available in your country" is geo_blocked, "... try again later" is a rate limit.
_CLASS_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (cls, re.compile(pattern, re.IGNORECASE)) for cls, pattern in (
        ("invalid_input", r"is not a valid URL"),
        ("private", r"private video|this video is private|members[- ]only|join this channel"
                    r"|only available for registered users|requires (?:a )?(?:login|payment|purchase)"),
        ("age_restricted", r"confirm your age|age[- ]restricted|inappropriate for some users"),
        ("geo_blocked", r"not (?:made this video )?available in your (?:country|region|location)"
                        r"|geo[- ]?(?:restrict|block)|from your location"),
        ("rate_limited", r"HTTP Error 429|Too Many Requests|rate[- ]limit|confirm you.re not a bot"
                         r"|try again later"),
        ("network", r"HTTP Error 5\d\d|connection (?:refused|reset|aborted)|timed out|timeout"
                    r"|temporary failure in name resolution|name or service not known|URLError"
                    r"|urlopen error|network is unreachable|no route to host|remote end closed"
                    r"|IncompleteRead|content too short|unable to connect to proxy|EOF occurred"),
        ("unsupported", r"unsupported URL|no video formats found|requested format is not available"
                        r"|DRM protected"),
        ("unavailable", r"HTTP Error (?:404|410)|video unavailable|not available|has been removed"
                        r"|been terminated|does not exist|no longer available|live event will begin"),
        # yt-dlp's word for a response without a body: a 0-byte file, as a local one is
        ("empty_media", r"did not get any data blocks"),
    )
)


def clean_message(message: str) -> str:
    """The message without ANSI color codes (yt-dlp colors ``ERROR:`` on a terminal)."""
    return _ANSI.sub("", message).strip()


def classify_error(message: str) -> str:
    """Error class (``stage.ERROR_CLASSES``) of a yt-dlp / network error message; ``other`` if unknown."""
    text = clean_message(message)
    for error_class, pattern in _CLASS_PATTERNS:
        if pattern.search(text):
            return error_class
    return "other"


# --- the stage -------------------------------------------------------------------------------


class _YtdlpLog:
    """yt-dlp ``logger``: forwards to ``logging`` (no stderr spam from workers) and keeps the tail.

    The tail explains the rare download that ends without a file (yt-dlp reports, e.g., a
    ``max-filesize`` abort only as a screen message, not as an error).
    """

    def __init__(self) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=8)

    def debug(self, msg: str) -> None:
        self.tail.append(msg)
        log.debug("%s", msg)

    def info(self, msg: str) -> None:
        self.tail.append(msg)
        log.info("%s", msg)

    def warning(self, msg: str) -> None:
        self.tail.append(msg)
        log.debug("yt-dlp %s", msg)  # warnings such as "falling back on generic extractor" are routine

    def error(self, msg: str) -> None:
        self.tail.append(msg)
        log.debug("yt-dlp %s", msg)  # raised as DownloadError right after; the row records it


# Fields of yt-dlp's info dict kept in ``source_info`` (provenance for the sample json).
_INFO_FIELDS = ("id", "title", "duration", "uploader", "channel_id", "upload_date", "webpage_url",
                "extractor", "format_id", "ext", "width", "height", "fps", "vcodec", "acodec", "license",
                "language")


# URL path suffixes of plain media files: worth one direct GET before asking yt-dlp.
_DIRECT_SUFFIXES = frozenset(VIDEO_SUFFIXES + AUDIO_SUFFIXES)
# Content types that mean "a page or a playlist, not the media itself": yt-dlp's job.
_NOT_MEDIA = ("text/", "application/xhtml", "application/json", "application/x-mpegurl",
              "application/vnd.apple.mpegurl", "application/dash+xml")


@dataclass
class _Fetched:
    """One download: the local file, the source time it starts at, its source_info and probe JSON."""

    path: Path
    offset: float
    info: dict[str, Any]
    probe: str = ""


class Fetcher(Stage):
    """Download (or locate) each request's media; one output row per input row.

    ``fetch_local(batch, folder)`` leaves the files in ``folder`` and names them in ``media_path``
    (the graph uses it when the media stage runs in the same worker); calling the stage returns
    their bytes in ``media`` instead.
    """

    name = "fetch"
    Config = FetchConfig
    output_defaults: ClassVar[dict[str, Any]] = {"media": b"", "media_offset": 0.0, "source_info": "{}",
                                                 "probe": ""}

    def __init__(self, config: FetchConfig | None = None, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        super().__init__(config)
        cfg: FetchConfig = self.config
        if cfg.cookies is not None and not Path(cfg.cookies).is_file():
            raise ConfigError(f"fetch.cookies: no such file {cfg.cookies!r}")
        self.sleep = sleep  # injectable so tests (and callers with their own pacing) do not wait
        self.rng = rng or random.Random()
        self._ydl = threading.local()  # one YoutubeDL per worker thread, built on first use

    def backoff(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt ``attempt`` (0-based): full jitter, capped."""
        cfg: FetchConfig = self.config
        return self.rng.uniform(0.0, min(cfg.backoff_max_s, cfg.backoff_s * 2.0 ** attempt))

    # -- batches ------------------------------------------------------------------------------------

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Fetch a batch and return each file's bytes in ``media`` (for a media stage elsewhere)."""
        cfg: FetchConfig = self.config
        with tempfile.TemporaryDirectory(prefix="vast-fetch-", dir=scratch_dir(cfg.work_dir),
                                         ignore_cleanup_errors=True) as tmp:
            rows = rows_of(self.fetch_local(batch, Path(tmp)))
            for row in rows:
                path = row.pop("media_path", "")
                row["media"] = Path(path).read_bytes() if path and row["status"] == "ok" else b""
        columns = [*batch, *self.output_defaults]
        return batch_of(rows, list(dict.fromkeys(columns)), self.output_defaults)

    def fetch_local(self, batch: dict[str, Any], folder: Path) -> dict[str, Any]:
        """Fetch a batch into ``folder``; rows name their file in ``media_path`` (owned by the caller,
        who removes ``folder``; a local source is named where it is). Rows of one source share a file."""
        rows = rows_of(batch)
        out: list[dict[str, Any]] = list(rows)
        groups: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if row["status"] != "ok":
                continue
            try:
                self._check_request(row)
            except SampleError as e:
                out[i] = fail(row, e.error_class, e.message, self.name)
                continue
            groups.setdefault(str(row["source"]), []).append(i)
        for n, (source, idx) in enumerate(groups.items()):
            spans = [_span_of(rows[i]) for i in idx]
            try:
                got = self._fetch_source(source, spans, folder / f"s{n}")
            except SampleError as e:
                for i in idx:
                    out[i] = fail(rows[i], e.error_class, e.message, self.name)
                continue
            except Exception as e:  # noqa: BLE001 - one bad source must not sink the batch (see Stage)
                last = f"{type(e).__name__}: {e}"
                for i in idx:
                    out[i] = fail(rows[i], "stage_error", last, self.name)
                continue
            for i in idx:
                out[i] = {**rows[i], "media_path": str(got.path), "media_offset": got.offset,
                          "source_info": json.dumps(got.info), "probe": got.probe}
        defaults = {**self.output_defaults, "media_path": ""}
        defaults.pop("media")
        columns = [c for c in dict.fromkeys([*batch, *defaults]) if c != "media"]
        return batch_of(out, columns, defaults)

    def process(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Fetch one request (its bytes in ``media``); raises ``SampleError`` for a per-sample failure."""
        out = rows_of(self(batch_of([row])))[0]
        if out["status"] != "ok":
            raise SampleError(out["error_class"], out["message"])
        return [out]

    # -- one source -------------------------------------------------------------------------------

    def _check_request(self, row: dict[str, Any]) -> None:
        cfg: FetchConfig = self.config
        span = _span_of(row)
        start, end = float(row["start"]), float(row["end"])
        if span is not None and not 0.0 <= start < end:
            raise SampleError("invalid_input", f"bad span start={start} end={end}")
        if span is not None and span[1] - span[0] > cfg.max_source_s:
            raise SampleError("too_long", f"span of {span[1] - span[0]:.1f}s exceeds max_source_s="
                                          f"{cfg.max_source_s:g}s")
        source = source_path(str(row["source"]))  # a file:// source is a path whose bytes are not UTF-8
        if not source.startswith(("http://", "https://")) and not os.path.isabs(source):
            raise SampleError("invalid_input", f"source is neither an http(s) URL nor an absolute path: "
                                               f"{source!r}")

    def _fetch_source(self, source: str, spans: list[tuple[float, float] | None], folder: Path) -> _Fetched:
        """One download serving ``spans`` (None: the whole video) of ``source``."""
        # one section covering every span, unless a request needs the whole video
        section = None if any(s is None for s in spans) else (min(s[0] for s in spans),  # type: ignore[index]
                                                              max(s[1] for s in spans))  # type: ignore[index]
        if not source.startswith(("http://", "https://")):
            return self._read_local(Path(source_path(source)), section)
        folder.mkdir(parents=True, exist_ok=True)
        if self._direct(source):
            got = self._with_retries(lambda: self._get_direct(source, section, folder))
            if got is not None:
                return got
        return self._with_retries(lambda: self._download(source, section, folder))

    def _with_retries(self, attempt_fn: Callable[[], Any]) -> Any:
        cfg: FetchConfig = self.config
        for attempt in range(cfg.retries + 1):
            try:
                return attempt_fn()
            except SampleError as e:
                if e.error_class not in TRANSIENT_CLASSES or attempt == cfg.retries:
                    raise
                delay = self.backoff(attempt)
                log.info("fetch attempt %d failed (%s), retrying in %.2fs", attempt + 1, e.error_class, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    # -- local files ----------------------------------------------------------------------------

    def _read_local(self, path: Path, span: tuple[float, float] | None) -> _Fetched:
        cfg: FetchConfig = self.config
        try:
            st = path.stat()  # stat, not open: opening a FIFO would wait for a writer
        except FileNotFoundError:
            raise SampleError("unavailable", f"no such file: {path}") from None
        except OSError as e:
            raise SampleError("unavailable", f"cannot read {path}: {e}") from None
        if not stat.S_ISREG(st.st_mode):
            # a FIFO would block the run, a device (/dev/zero) never end, a directory is no media:
            # nothing is read from it, and retrying cannot help, so the line is what needs fixing
            raise SampleError("invalid_input", f"{path} is {_file_kind(st.st_mode)}, not a regular file: "
                                               "a local source must be a media file")
        size = st.st_size
        if size == 0:
            raise SampleError("empty_media", f"{path} is 0 bytes")
        if size > cfg.max_bytes:
            raise SampleError("too_large", f"{path} is {size} bytes, over max_bytes={cfg.max_bytes}")
        if not os.access(path, os.R_OK):
            raise SampleError("unavailable", f"cannot read {path}: permission denied")
        # An undecodable file is the media stage's to classify; fetch only needs the duration.
        raw, probed = _probe_json(path)
        duration = probed.get("duration")
        if span is None and duration is not None and duration > cfg.max_source_s:
            raise _too_long(str(path), duration, cfg.max_source_s)
        shown = Path(valid_text(str(path)))  # info is JSON: a name that is not UTF-8 shows its bytes escaped
        info = {"id": shown.stem, "title": shown.stem, "extractor": "local", "webpage_url": str(shown),
                "ext": shown.suffix.lstrip(".") or None, **probed, "bytes": size,
                "section_downloaded": False}
        return _Fetched(path, 0.0, info, raw)

    # -- plain media URLs -------------------------------------------------------------------------

    def _direct(self, url: str) -> bool:
        """Whether yt-dlp adds nothing for ``url``: a plain media file and no cookies/proxy/rate limit."""
        cfg: FetchConfig = self.config
        suffix = PurePosixPath(urlparse(url).path).suffix.lower()
        return cfg.direct and suffix in _DIRECT_SUFFIXES and not (cfg.cookies or cfg.proxy or cfg.rate_limit)

    def _get_direct(self, url: str, span: tuple[float, float] | None, folder: Path) -> _Fetched | None:
        """One GET of the whole file; None when yt-dlp should take it after all (a page, not media; or a
        large file of which a section will do)."""
        cfg: FetchConfig = self.config
        deadline = time.monotonic() + cfg.download_timeout_s
        request = urllib.request.Request(url, headers={"User-Agent": "vast-pipeline", "Accept": "*/*"})
        try:
            response = urllib.request.urlopen(request, timeout=cfg.socket_timeout_s)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as e:
            e.close()
            raise _http_error(url, str(e)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise _http_error(url, f"{type(e).__name__}: {e}") from None
        with response:
            ctype = response.headers.get_content_type()
            if ctype.startswith(_NOT_MEDIA):
                return None
            declared = (response.headers.get("Content-Length") or "").strip()
            length = int(declared) if declared.isdigit() else None
            if span is not None and cfg.section and length and length > cfg.section_min_bytes:
                return None
            if length and length > cfg.max_bytes:
                raise SampleError("too_large", f"{url} is {length} bytes, over max_bytes={cfg.max_bytes}")
            suffix = PurePosixPath(urlparse(url).path).suffix.lower()
            path = folder / f"media{suffix}"
            size = 0
            try:
                with open(path, "wb") as f:
                    # read1: one receive per call, so a trickling server meets the deadline check
                    while chunk := response.read1(1 << 20):
                        size += len(chunk)
                        if size > cfg.max_bytes:
                            raise SampleError("too_large", f"{url} sent over max_bytes={cfg.max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise SampleError("network", f"{url}: download timed out after "
                                                         f"download_timeout_s={cfg.download_timeout_s:g} s "
                                                         f"({size} bytes arrived)")
                        f.write(chunk)
            except (OSError, http.client.HTTPException) as e:
                raise _http_error(url, f"{type(e).__name__}: {e}") from None
        if length is not None and size != length:
            raise _http_error(url, f"IncompleteRead: {size} of {length} bytes")
        if size == 0:
            raise SampleError("empty_media", f"{url} sent 0 bytes")
        raw, probed = _probe_json(path)
        duration = probed.get("duration")
        if span is None and duration is not None and duration > cfg.max_source_s:
            raise _too_long(url, duration, cfg.max_source_s)
        stem = PurePosixPath(urlparse(url).path).stem
        info = {"id": stem, "title": stem, "extractor": "http", "webpage_url": url, "ext": suffix.lstrip("."),
                **probed, "bytes": size, "section_downloaded": False}
        return _Fetched(path, 0.0, info, raw)

    # -- URLs through yt-dlp ------------------------------------------------------------------------

    def _ydl_params(self) -> dict[str, Any]:
        """This worker thread's ``YoutubeDL`` parameters (per-download ones are set by ``_download``)."""
        cfg: FetchConfig = self.config
        params: dict[str, Any] = {
            "ignoreconfig": True,  # a user's ~/.config/yt-dlp must not change what a pipeline fetches
            "quiet": True,
            "noprogress": True,
            "color": {"stdout": "no_color", "stderr": "no_color"},
            "noplaylist": True,
            # best at or below the cap, else the smallest above it; a lone direct file always matches
            "format": "bv*+ba/b",
            "format_sort": [f"res:{cfg.max_height}"],
            "outtmpl": {"default": "media.%(ext)s"},
            "socket_timeout": cfg.socket_timeout_s,
            "max_filesize": cfg.max_bytes,
            # whole-request retries live in _with_retries (with backoff); yt-dlp's own would multiply them
            "retries": 0,
            "extractor_retries": 0,
            # a lost DASH/HLS fragment is cheaper to refetch than the whole download
            "fragment_retries": cfg.retries,
            # section downloads run ffmpeg, which ignores socket_timeout: a stalled read must end too
            "external_downloader_args": {"ffmpeg_i": ["-rw_timeout", str(int(cfg.socket_timeout_s * 1e6))]},
            "force_keyframes_at_cuts": cfg.force_keyframes,
        }
        if cfg.cookies:
            # yt-dlp writes the cookie jar back on exit: concurrent workers must not share the file
            folder = tempfile.mkdtemp(prefix="vast-cookies-", dir=scratch_dir(cfg.work_dir))
            weakref.finalize(self, shutil.rmtree, folder, True)
            private = Path(folder) / "cookies.txt"
            shutil.copyfile(cfg.cookies, private)
            params["cookiefile"] = str(private)
        if cfg.proxy:
            params["proxy"] = cfg.proxy
        if cfg.rate_limit:
            params["ratelimit"] = parse_rate(cfg.rate_limit)
        return params

    def _youtube_dl(self) -> Any:
        """This thread's ``YoutubeDL``: built once (~1,900 extractors, the CA bundle), reused per fetch."""
        ydl = getattr(self._ydl, "instance", None)
        if ydl is None:
            import yt_dlp

            ydl = self._ydl.instance = yt_dlp.YoutubeDL(self._ydl_params())
            ydl.add_progress_hook(self._check_limits)
        return ydl

    def _check_limits(self, status: dict[str, Any]) -> None:
        """yt-dlp progress hook: stop a download past ``max_bytes`` or its deadline (``download_timeout_s``).

        yt-dlp's own ``max_filesize`` only acts on a size announced in advance: an endless response
        without one would be read until the disk is full. Raising here ends the download (the hook
        runs in the downloading thread, between two blocks it has read).
        """
        limits: _Limits | None = getattr(self._ydl, "limits", None)
        if limits is None or status.get("status") != "downloading":
            return
        limits.check(str(status.get("tmpfilename") or status.get("filename") or ""),
                     int(status.get("downloaded_bytes") or 0))

    def _download(self, url: str, span: tuple[float, float] | None, folder: Path) -> _Fetched:
        try:
            import yt_dlp
        except ImportError as e:  # pragma: no cover - yt-dlp is a core dependency
            raise ImportError("the fetch stage needs yt-dlp: pip install 'vast-pipeline'") from e
        from yt_dlp.utils import download_range_func

        cfg: FetchConfig = self.config
        logger = _YtdlpLog()
        tmp = Path(tempfile.mkdtemp(prefix="ytdlp-", dir=folder))  # a fresh folder per attempt
        ydl = self._youtube_dl()
        ydl.params.update(logger=logger, paths={"home": str(tmp), "temp": str(tmp)})
        if span is not None and cfg.section:
            ydl.params["download_ranges"] = download_range_func(None, [span])
        limits = self._ydl.limits = _Limits(url, cfg.max_bytes, cfg.download_timeout_s, tmp)
        try:
            # unprocessed first: a playlist is refused before each of its entries is extracted
            info = ydl.extract_info(url, download=False, process=False)
            self._check_before_download(info, span)
            info = ydl.process_ie_result(info, download=False)  # resolves redirects, picks formats
            if "download_ranges" in ydl.params and info.get("duration") is None and _one_http_file(info):
                # A plain file names no duration. A section starting after its end would download as an
                # empty file that fails to decode: learn the length first (a ranged read or two). What
                # ffprobe cannot read over HTTP a section download (ffmpeg) cannot either: it is fetched
                # whole, and the media stage judges the bytes, as it would a local file.
                info["duration"] = self._remote_duration(info["url"])
                if info["duration"] is None:
                    ydl.params.pop("download_ranges")
            self._check_before_download(info, span)
            # the resolved info is downloaded as is: no second extraction
            with limits:
                info = ydl.process_ie_result(info, download=True)
        except yt_dlp.utils.YoutubeDLError as e:
            if limits.expired:  # the watchdog stopped the ffmpeg of a section download
                raise limits.timed_out() from None
            message = clean_message(str(e))
            raise SampleError(classify_error(message), message) from None
        finally:
            self._ydl.limits = None
            ydl.params.pop("logger", None)
            ydl.params.pop("download_ranges", None)
        if limits.expired:  # stopped, though yt-dlp did not say so
            raise limits.timed_out()
        downloads = info.get("requested_downloads") or []
        path = Path(downloads[0]["filepath"]) if downloads and downloads[0].get("filepath") else None
        if path is None or not path.is_file():
            said = " | ".join(clean_message(m) for m in logger.tail)
            error_class = "too_large" if "max-filesize" in said else "other"
            raise SampleError(error_class, f"yt-dlp produced no file; it said: {said}")
        size = path.stat().st_size
        if size > cfg.max_bytes:
            raise SampleError("too_large", f"downloaded {size} bytes, over max_bytes={cfg.max_bytes}")
        section_start = downloads[0].get("section_start")
        sectioned = section_start is not None
        out = {k: info.get(k) for k in _INFO_FIELDS}
        raw = ""
        if any(out[k] is None for k in ("duration", "width", "height", "fps")):
            # plain file URLs carry no metadata: probe what arrived, so too_long still holds
            raw, probed = _probe_json(path)
            for k in ("width", "height", "fps"):
                out[k] = out[k] if out[k] is not None else probed.get(k)
            if out["duration"] is None and not sectioned:  # a section's length is not the source's
                out["duration"] = probed.get("duration")
                if span is None and out["duration"] is not None and out["duration"] > cfg.max_source_s:
                    raise _too_long(url, out["duration"], cfg.max_source_s)
        out.update(ext=path.suffix.lstrip("."), bytes=size, section_downloaded=sectioned)
        if sectioned:
            out["section"] = [section_start, downloads[0].get("section_end")]
        return _Fetched(path, float(section_start) if sectioned else 0.0, out, raw)

    def _remote_duration(self, url: str) -> float | None:
        """The duration ffprobe reads from a media file's URL, or None when it cannot read one."""
        cfg: FetchConfig = self.config
        data, _ = ffprobe(url, timeout_s=min(2 * cfg.socket_timeout_s, cfg.download_timeout_s),
                          input_options=["-rw_timeout", str(int(cfg.socket_timeout_s * 1e6))])
        return probe_summary(data).get("duration") if data else None

    def _check_before_download(self, info: dict[str, Any], span: tuple[float, float] | None) -> None:
        """Refuse what must not be downloaded, using only the extracted info."""
        cfg: FetchConfig = self.config
        if info.get("_type") in ("playlist", "multi_video"):
            raise SampleError("unsupported", f"{info.get('webpage_url') or info.get('id')} is a playlist, "
                                             "not a video")
        if info.get("is_live") or info.get("live_status") == "is_live":
            raise SampleError("unsupported", f"{info.get('webpage_url') or info.get('id')} is a live stream")
        duration = info.get("duration")
        if duration is None:
            return
        if span is None and duration > cfg.max_source_s:
            raise _too_long(info.get("webpage_url") or "source", duration, cfg.max_source_s)
        if span is not None and span[0] >= duration:
            raise SampleError("invalid_input", f"span {span[0]:g}-{span[1]:g} s starts after the end of the "
                                               f"source (it lasts {duration:g} s)")
        if span is None or not cfg.section:
            size = info.get("filesize") or info.get("filesize_approx")
            if size and size > cfg.max_bytes:
                raise SampleError("too_large", f"selected format is ~{size} bytes, over "
                                               f"max_bytes={cfg.max_bytes}")


class _Limits:
    """The bytes and the deadline of one yt-dlp download attempt (all the files it writes together).

    yt-dlp's HTTP downloads report each block to ``check``. Its ffmpeg downloads (sections, some
    streams) report nothing and are waited for without a limit, so while the attempt runs (``with``)
    a watchdog kills, at the deadline, the processes writing into the attempt's folder.
    """

    def __init__(self, url: str, max_bytes: int, timeout_s: float, folder: Path):
        self.url, self.max_bytes, self.timeout_s, self.folder = url, max_bytes, timeout_s, str(folder)
        self.deadline = time.monotonic() + timeout_s
        self.sizes: dict[str, int] = {}  # file being written → bytes so far (video and audio of a merge)
        self.expired = False
        self._timer: threading.Timer | None = None

    def check(self, name: str, downloaded: int) -> None:
        self.sizes[name] = downloaded
        if sum(self.sizes.values()) > self.max_bytes:
            raise SampleError("too_large", f"{self.url} sent over max_bytes={self.max_bytes} bytes")
        if time.monotonic() > self.deadline:
            raise self.timed_out()

    def timed_out(self) -> SampleError:
        return SampleError("network", f"{self.url}: download timed out after download_timeout_s="
                                      f"{self.timeout_s:g} s ({sum(self.sizes.values())} bytes arrived)")

    def __enter__(self) -> _Limits:
        self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._expire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        import psutil

        self.expired = True
        for child in psutil.Process().children(recursive=True):
            try:
                if any(self.folder in arg for arg in child.cmdline()):
                    child.kill()
            except psutil.Error:
                pass  # it ended meanwhile


def _one_http_file(info: dict[str, Any]) -> bool:
    """Whether the chosen format is one file fetched over http(s) (not merged formats, not a stream)."""
    return bool(info.get("url")) and not info.get("requested_formats") and \
        str(info.get("protocol") or "") in ("http", "https")


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def _file_kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "a special file")


def _too_long(what: str, duration: float, limit: float) -> SampleError:
    return SampleError("too_long", f"{what} lasts {duration:.1f}s, over max_source_s={limit:g}s")


def _span_of(row: dict[str, Any]) -> tuple[float, float] | None:
    start, end = float(row["start"]), float(row["end"])
    return None if math.isnan(start) and math.isnan(end) else (start, end)


def _http_error(url: str, message: str) -> SampleError:
    text = clean_message(f"{url}: {message}")
    return SampleError(classify_error(text), text)


def _probe_json(path: Path) -> tuple[str, dict[str, Any]]:
    """ffprobe's JSON of a fetched file (handed on to the media stage) and the facts fetch reads from
    it; ("", {}) for a file ffprobe cannot read (deciding that it is undecodable is the media stage's job)."""
    data, _ = ffprobe(path, timeout_s=60)
    if data is None:
        return "", {}
    return json.dumps(data), probe_summary(data)


def probe(path: Path) -> dict[str, Any]:
    """Duration, size and frame rate of a media file from ffprobe; ``{}`` entries it cannot read.

    Never raises for a bad file: deciding that a file is undecodable is the media stage's job.
    """
    return _probe_json(path)[1]


def probe_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Duration, size and frame rate from ffprobe's JSON; absent entries it does not state."""
    result: dict[str, Any] = {}
    try:
        result["duration"] = float(data["format"]["duration"])
    except (KeyError, TypeError, ValueError):
        pass
    video = next((s for s in data.get("streams", []) if s.get("codec_type") == "video"), None)
    if video:
        result["width"], result["height"] = video.get("width"), video.get("height")
        num, _, den = str(video.get("avg_frame_rate", "0/0")).partition("/")
        if num.isdigit() and den.isdigit() and int(den):
            result["fps"] = int(num) / int(den)
    return result
