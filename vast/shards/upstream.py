"""``export --format upstream``: our corpus laid out as upstream VAST's own data loaders read it.

Upstream VAST (TXH-mercury/VAST at 410ca47) reads a corpus in one of two ways, and this export
serves both from the committed samples that have an omni-caption:

``annoindexed`` (``data/IndexAnno.py``; config keys ``txt``, ``vision``, ``audio``)::

    DEST/train_desc.json   [{"video_id", "desc", "subtitle", "vision_cap", "audio_cap", "vast_cap"}]
    DEST/videos/KEY.mp4    the clip; its VisionMapper opens {vision}/{id}.mp4 with decord
    DEST/audios/KEY.wav    16 kHz mono PCM; its AudioMapper tries {audio}/{id}, {id}.wav, .mp3,
                           .mkv and opens the file with torchaudio.load

The dataset takes a record's id from the first of ``video_id``, ``image_id``, ``image``, ``id``
(the clip key here, which names the media files) and its caption from ``desc`` (else ``caption``):
the omni-caption. ``subtitle`` is always a string (tasks with ``s`` read it). A clip without
audio has no wav: the AudioMapper then returns all-zero spectrograms, VAST's own "no audio". An
audio-only item has no mp4: configure such a corpus without ``vision``, as upstream's audio sets.

``srcindexed`` (``data/IndexSrc.py``; ``vision``, ``txt``, ``txt_format: json``)::

    DEST/shards.json       the committed shard tars (a JSON list: its ``vision`` may name one)
    DEST/captions.json     {KEY: omni-caption}: it looks each sample's ``__key__`` up in this dict

It reads ``to_tuple("mp4", "__key__")`` from the tars themselves (nothing is copied); a sample
whose key the dict lacks (no omni-caption, or an audio-only item) is skipped by its error handler.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from vast.shards.store import OutputStore
from vast.shards.vast27m import committed_files

ANNOTATIONS = "train_desc.json"
CAPTIONS = "captions.json"
SHARDS = "shards.json"
VIDEOS = "videos"
AUDIOS = "audios"


def upstream_record(info: dict[str, Any]) -> dict[str, Any]:
    """The annotation record upstream's ``AnnoIndexedDataset`` reads, from a sample's json."""
    return {"video_id": info["key"], "desc": info["vast_cap"], "subtitle": info.get("subtitle") or "",
            "vision_cap": info.get("vision_cap") or [], "audio_cap": info.get("audio_cap") or [],
            "vast_cap": info["vast_cap"]}


def export_upstream(output: str, dest: str | Path, workers: int | None = None) -> Counter[str]:
    """Write the upstream layout of ``output``'s committed samples into the folder ``dest``.

    Returns counts: ``records`` exported, ``videos`` and ``audios`` written, and the samples left
    out because they have no omni-caption (``uncaptioned``).
    """
    from webdataset import reraise_exception

    from vast.shards.reader import tar_samples

    store = OutputStore(output, create=False)
    root = Path(dest)
    (root / VIDEOS).mkdir(parents=True, exist_ok=True)
    (root / AUDIOS).mkdir(parents=True, exist_ok=True)
    tars = committed_files(store, ".tar")
    urls = [os.path.abspath(store.path(t)) if store.local else f"{store.url}/{t}" for t in tars]
    records, captions, counts = [], {}, Counter[str]()
    workers = workers or os.cpu_count() or 1
    pending: set[Future[None]] = set()
    with ThreadPoolExecutor(workers) as pool:
        for sample in tar_samples(urls, reraise_exception):
            info = json.loads(sample["json"])
            if not info.get("vast_cap"):
                counts["uncaptioned"] += 1
                continue
            key = info["key"]
            records.append(upstream_record(info))
            if info.get("has_video", True):
                (root / VIDEOS / f"{key}.mp4").write_bytes(sample["mp4"])
                captions[key] = info["vast_cap"]
                counts["videos"] += 1
            if info.get("has_audio", True):
                if len(pending) >= 4 * workers:  # bounded: the flac bytes wait in memory
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        f.result()
                pending.add(pool.submit(flac_to_wav, sample["flac"], root / AUDIOS / f"{key}.wav"))
                counts["audios"] += 1
        for f in pending:
            f.result()
    counts["records"] = len(records)
    _write_json(root / ANNOTATIONS, records)
    _write_json(root / CAPTIONS, captions)
    _write_json(root / SHARDS, urls)
    return counts


def flac_to_wav(flac: bytes, path: Path) -> None:
    """Decode FLAC bytes into a 16 kHz mono 16-bit PCM WAV file (what every torchaudio backend opens)."""
    args = ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-i", "pipe:0",
            "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", "-map_metadata", "-1", str(path)]
    proc = subprocess.run(args, input=flac, capture_output=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{path.name}: ffmpeg could not convert the flac: "
                           f"{proc.stderr.decode(errors='replace')[-300:]}")


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
