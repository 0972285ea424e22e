"""Fixtures shared by the tests: generated media, a local range-capable HTTP server, and the end of each
test module's in-process Ray."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.httpserver import RangeHTTPServer
from tests.mediagen import make_audio_only, make_corrupt, make_video


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    """A test module that started Ray in this process (an in-process ingest, annotate, shards build ...)
    ends it: the next module's runs start the Ray their own config asks for, not the one left over."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def media_root(tmp_path_factory) -> Path:
    """A folder of generated media: speech, tone, silent, scene cuts, corrupt, audio-only."""
    root = tmp_path_factory.mktemp("media")
    make_video(root / "speech.mp4", seconds=8.0, audio="speech")
    make_video(root / "tone.mp4", seconds=8.0, audio="tone")
    make_video(root / "silent.mp4", seconds=6.0, audio=None)
    make_video(root / "scenes.mp4", seconds=24.0, audio="tone", scene_every=6.0)
    make_corrupt(root / "corrupt.mp4")
    make_audio_only(root / "audio_only.m4a")
    for i in range(10):  # distinct URLs of one clip, to count downloads per clip
        shutil.copy(root / "tone.mp4", root / f"copy{i}.mp4")
    shutil.copy(root / "tone.mp4", root / "limited.mp4")  # served once a test lifts its scripted 429s
    return root


@pytest.fixture(scope="session")
def http_server(media_root):
    """The media folder served on 127.0.0.1 with byte ranges."""
    with RangeHTTPServer(media_root) as srv:
        yield srv
