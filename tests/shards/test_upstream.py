"""``export --format upstream`` against the contract of upstream VAST's loaders (TXH-mercury/VAST 410ca47).

The rules below are upstream's, restated from its code (not imported: it needs CUDA, its own
``utils`` package and a BERT checkpoint); each names the file it comes from.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.shards.probe import audio_samples
from tests.shards.test_datasets import keyed_seconds, raw_samples
from vast.cli import main

pytestmark = pytest.mark.slow


def upstream_id(anno: dict) -> str:
    """data/IndexAnno.py: the id is the first of video_id, image_id, image, id that the record has."""
    return next(anno[k] for k in ("video_id", "image_id", "image", "id") if k in anno)


def upstream_caption(anno: dict):
    """data/IndexAnno.py: ``desc`` if present, else ``caption`` (a KeyError without either)."""
    return anno["desc"] if "desc" in anno else anno["caption"]


def upstream_video_path(vision: str, id_: str) -> str | None:
    """data/vision_mapper.py (video_rawvideo): {vision}/{id}, then + .mp4, .avi, .webm, .mkv."""
    path = os.path.join(vision, str(id_))
    for candidate in (path, path + ".mp4", path + ".avi", path + ".webm", path + ".mkv"):
        if os.path.exists(candidate):
            return candidate
    return None


def upstream_audio_path(audio: str, id_: str) -> str | None:
    """data/audio_mapper.py: {audio}/{id}, {audio}/{id}.wav, then the path with 'wav'→'mp3', 'mp3'→'mkv'.

    None: upstream prints "not have audios" and uses an all-zero spectrogram (VAST's missing audio).
    """
    path = os.path.join(audio, id_)
    if os.path.exists(path):
        return path
    path = os.path.join(audio, id_ + ".wav")
    for candidate in (path, path.replace("wav", "mp3"), path.replace("wav", "mp3").replace("mp3", "mkv")):
        if os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def exported(corpus, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("upstream") / "vast27m"
    assert main(["export", str(corpus.output), str(dest), "--format", "upstream"]) == 0
    return dest


def test_annotation_records_carry_what_annoindexed_reads(corpus, exported):
    raw = {k: json.loads(s["json"]) for k, s in raw_samples(corpus.output).items()}
    annos = json.loads((exported / "train_desc.json").read_text())
    captioned = {k for k, info in raw.items() if info["vast_cap"]}
    assert captioned and captioned != set(raw)  # some samples have no omni-caption: left out
    assert sorted(upstream_id(a) for a in annos) == sorted(captioned)
    for anno in annos:
        info = raw[upstream_id(anno)]
        assert upstream_caption(anno) == info["vast_cap"] and isinstance(anno["desc"], str)
        assert isinstance(anno["subtitle"], str)  # every record has one: the collate needs no None
        assert (anno["vision_cap"], anno["audio_cap"], anno["vast_cap"]) == (
            info["vision_cap"], info["audio_cap"], info["vast_cap"])


def test_media_folders_resolve_as_the_upstream_mappers_look_them_up(corpus, exported):
    import decord
    import torchaudio

    raw = raw_samples(corpus.output)
    annos = json.loads((exported / "train_desc.json").read_text())
    kinds = set()
    for anno in annos:
        id_ = upstream_id(anno)
        info, seconds = json.loads(raw[id_]["json"]), keyed_seconds(id_)
        video = upstream_video_path(str(exported / "videos"), id_)
        if info["has_video"]:
            assert video == str(exported / "videos" / f"{id_}.mp4")
            assert Path(video).read_bytes() == raw[id_]["mp4"]
            reader = decord.VideoReader(video)
            assert len(reader) == round(seconds * reader.get_avg_fps())
        else:
            assert video is None  # an audio-only item: configure its corpus without `vision`
        audio = upstream_audio_path(str(exported / "audios"), id_)
        if info["has_audio"]:
            assert audio == str(exported / "audios" / f"{id_}.wav")
            waveform, rate = torchaudio.load(audio)  # the mapper's decoder
            assert rate == 16000 and waveform.shape == (1, round(seconds * 16000))
            reference = audio_samples(raw[id_]["flac"])  # the flac, decoded by ffmpeg
            assert np.array_equal(np.round(waveform[0].numpy() * 32768).astype(np.int16), reference)
            # the BEATs front end, as the mapper computes it
            fbank = torchaudio.compliance.kaldi.fbank(waveform * 2**15, num_mel_bins=64,
                                                      sample_frequency=16000, frame_length=25, frame_shift=10)
            assert fbank.shape == (1 + (waveform.shape[1] - 400) // 160, 64) and torch.isfinite(fbank).all()
        else:
            assert audio is None  # silence upstream's way: its mapper returns zeros
        kinds.add((info["has_video"], info["has_audio"]))
    assert kinds == {(True, True), (True, False), (False, True)}


def test_srcindexed_reads_our_tars_with_the_caption_dict(corpus, exported):
    import decord

    raw = {k: json.loads(s["json"]) for k, s in raw_samples(corpus.output).items()}
    tars = json.loads((exported / "shards.json").read_text())
    assert sorted(Path(t).name for t in tars) == sorted(p.name for p in corpus.output.glob("shard-*.tar"))
    captions = json.loads((exported / "captions.json").read_text())
    assert isinstance(captions, dict) and all(isinstance(v, str) and v for v in captions.values())
    found = 0
    # data/IndexSrc.py: to_tuple(mp4, __key__), the id is the key, the caption self.txt[id]
    for mp4, key in wds.WebDataset(tars, shardshuffle=False).to_tuple("mp4", "__key__"):
        if key in captions:
            assert captions[key] == raw[key]["vast_cap"] and raw[key]["has_video"]
            assert len(decord.VideoReader(io.BytesIO(mp4))) >= 1
            found += 1
        else:  # no omni-caption, or no pictures: upstream's handler skips the sample
            assert not raw[key]["vast_cap"] or not raw[key]["has_video"]
    assert found == len(captions) == sum(1 for i in raw.values() if i["vast_cap"] and i["has_video"])
