"""One real ingest output (real Ray, ffmpeg, decord) that the format tests read with other people's tools.

It holds every kind of sample an output can: clips with audio and captions imported from a
VAST-27M file in its released forms (a silent clip and an audio-only item among them), scene-cut
clips of a whole video and a still image, in shards of two, so some shards hold only placeholder
tracks; and two malformed VAST-27M records, which must end as ``invalid_input`` ledger rows.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pytest

# `datasets` must never reach for the Hub: everything these tests load is local
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Corpus:
    output: Path
    ok_keys: set[str]
    inputs: Path
    ledger: list[dict]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, media_root) -> Corpus:
    import ray

    from vast.pipeline.config import load_config
    from vast.pipeline.ingest import ingest
    from vast.shards.ledger import read_ledger
    from vast.shards.store import OutputStore

    root = tmp_path_factory.mktemp("corpus")
    still = root / "still.png"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240", "-frames:v", "1",
                    str(still)], check=True)
    vast27m = root / "vast27m.json"
    vast27m.write_text(json.dumps([  # the release's forms, captions included
        {"clip_id": "speech.3", "url": str(media_root / "speech.mp4"),
         "clip_span": ["00:00:01.000", "00:00:06.500"], "vision_cap": ["a test card"],
         "audio_cap": ["a man speaks"], "subtitle": "this is a test",
         "vast_cap": "A man speaks over a test card."},
        {"id": "tone.1", "url": str(media_root / "tone.mp4"), "begin_s": 2.003, "end_s": 7.517,
         "begin_t": "00:00:02.003", "end_t": "00:00:07.517", "vision_cap": ["colour bars"], "audio_cap": [],
         "subtitle": "", "vast_cap": "Colour bars and a tone."},
        {"id": "silent.2", "url": str(media_root / "silent.mp4"), "begin_t": "00:00:00.500",
         "end_t": "00:00:05.250", "vision_cap": ["a test card"], "vast_cap": "A silent test card."},
        {"id": "sound.1", "url": str(media_root / "audio_only.m4a"), "begin_s": 0, "end_s": 3.5,
         "audio_cap": ["a steady tone"], "vast_cap": "A steady tone."},
        # never silently wrong: these two become invalid_input rows, nothing is cut for them
        {"clip_id": "UmWkmGAu5Hc.14", "clip_span": ["00:07:08.199"], "vast_cap": "An unreadable span."},
        {"id": "tone.9", "url": str(media_root / "tone.mp4"), "vast_cap": "Captions without a span."},
    ]))
    ids = root / "ids.txt"
    ids.write_text(f"{media_root / 'scenes.mp4'}\n{still} 0 1\n")
    output = root / "out"
    cfg = load_config("tiny", {"output": str(output), "progress": False, "shards.samples_per_shard": 2,
                               "stages.media.options.audio_only": True})
    try:
        summary = ingest([str(vast27m), str(ids)], cfg)
    finally:
        ray.shutdown()  # nothing after the ingest needs Ray: give its memory back
    assert summary["clips"]["failed"] == 2 and summary["errors"] == {"invalid_input": 2}, summary
    ledger = read_ledger(OutputStore(str(output)))
    ok = set(ledger.filter(pc.equal(ledger["status"], "ok"))["key"].to_pylist())
    return Corpus(output=output, ok_keys=ok, inputs=vast27m, ledger=ledger.to_pylist())
