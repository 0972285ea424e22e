"""A real ingest output loads unchanged with Hugging Face `datasets` and with plain `webdataset`.

The reference for every value is the tar itself, read with ``tarfile`` and ``json`` alone; media
lengths come from the libraries' own decoders (torchcodec for `datasets`, decord and torchaudio).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import datasets
import pytest
import torch
import webdataset as wds

pytestmark = pytest.mark.slow
datasets.disable_progress_bars()


def raw_samples(output: Path) -> dict[str, dict[str, bytes]]:
    """Every sample's members, straight from the tars: {key: {ext: bytes, "__shard__": name}}."""
    out: dict[str, dict[str, bytes]] = {}
    for tar in sorted(output.glob("shard-*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf:
                key, _, ext = member.name.partition(".")
                out.setdefault(key, {"__shard__": tar.name})[ext] = tf.extractfile(member).read()
    return out


def keyed_seconds(key: str) -> float:
    _, start_ms, end_ms = key.rsplit("_", 2)
    return (int(end_ms) - int(start_ms)) / 1000


def assert_same_samples(rows: list[dict], expected_keys: set[str], raw: dict[str, dict]) -> None:
    keys = [r["__key__"] for r in rows]
    assert sorted(keys) == sorted(expected_keys)  # every sample, each once
    for r in rows:
        assert r["json"] == json.loads(raw[r["__key__"]]["json"]), r["__key__"]
        assert r["txt"] == raw[r["__key__"]]["txt"].decode()


def undecoded(features: datasets.Features) -> datasets.Features:
    """The same features with the media left as bytes (decoding is checked once, not per order)."""
    out = features.copy()
    out["mp4"], out["flac"] = datasets.Video(decode=False), datasets.Audio(decode=False)
    return out


@pytest.fixture(scope="module")
def raw(corpus) -> dict[str, dict[str, bytes]]:
    samples = raw_samples(corpus.output)
    assert set(samples) == corpus.ok_keys
    return samples


@pytest.mark.parametrize("streaming", [False, True])
def test_the_output_folder_is_a_dataset(corpus, raw, tmp_path, streaming):
    ds = datasets.load_dataset(str(corpus.output), split="train", streaming=streaming,
                               cache_dir=str(tmp_path))
    rows = list(ds)
    assert_same_samples(rows, corpus.ok_keys, raw)
    infos = {r["__key__"]: r["json"] for r in rows}
    assert not all(i["has_audio"] for i in infos.values()) and not all(i["has_video"] for i in infos.values())
    for r in rows:  # datasets' own decoders (torchcodec) open every member, placeholders included
        seconds = keyed_seconds(r["__key__"])
        audio = r["flac"].get_all_samples()
        assert audio.sample_rate == 16000 and audio.data.shape == (1, round(seconds * 16000))
        video = r["mp4"]
        fps = video.metadata.average_fps
        assert video.metadata.num_frames == round(seconds * fps), r["__key__"]


def test_manifest_json_and_plan_stay_out_of_the_default_split(corpus):
    builder = datasets.load_dataset_builder(str(corpus.output))
    files = [Path(f).name for f in builder.config.data_files["train"]]
    assert files == sorted(p.name for p in corpus.output.glob("shard-*.tar"))


def test_any_shard_order_and_any_subset_loads_with_the_cards_features(corpus, raw, tmp_path):
    features = undecoded(datasets.load_dataset_builder(str(corpus.output)).info.features)
    shards = sorted(str(p) for p in corpus.output.glob("shard-*.tar"))
    silent = {str(corpus.output / s["__shard__"]) for s in raw.values()
              if not json.loads(s["json"])["has_audio"]}
    assert silent and set(shards) - silent  # shards with silent clips and shards without
    orders = [shards[i:] + shards[:i] for i in range(len(shards))]  # every shard comes first once
    orders += [sorted(silent), sorted(set(shards) - silent)]
    for streaming in (False, True):
        for order in orders:
            ds = datasets.load_dataset("webdataset", data_files={"train": order}, features=features,
                                       split="train", streaming=streaming, cache_dir=str(tmp_path / "cache"))
            rows = list(ds)
            expected = {k for k, s in raw.items() if str(corpus.output / s["__shard__"]) in order}
            assert_same_samples(rows, expected, raw)
            assert [r["__key__"] for r in rows][:1] == [k for k in raw if raw[k]["__shard__"] ==
                                                        Path(order[0]).name][:1]


def test_the_card_declares_the_types_datasets_infers(corpus, raw, tmp_path):
    """Where inference is well defined (a sample with every list filled), it agrees with the card."""
    declared = datasets.load_dataset_builder(str(corpus.output)).info.features
    full = next(k for k, s in raw.items() if json.loads(s["json"])["vision_cap"]
                and json.loads(s["json"])["audio_cap"])
    one = tmp_path / "one.tar"
    with wds.TarWriter(str(one)) as w:
        w.write({"__key__": full, **{ext: data for ext, data in raw[full].items() if ext != "__shard__"}})
    inferred = datasets.load_dataset("webdataset", data_files={"train": [str(one)]}, split="train",
                                     cache_dir=str(tmp_path / "cache")).features
    assert set(inferred) == set(declared)
    for name in ("__key__", "__url__", "mp4", "flac", "txt"):
        assert type(inferred[name]) is type(declared[name]), name
    for name, feature in declared["json"].items():
        value = json.loads(raw[full]["json"])[name]
        if isinstance(feature, datasets.Json):  # free-form: inference would type it by its first keys
            assert value is not None
        elif value == []:  # an empty list infers as a list of null (frame_times when no frames were decoded)
            assert inferred["json"][name] == datasets.List(datasets.Value("null")), name
        else:
            assert inferred["json"][name] == feature, name


def test_manifests_load_with_the_parquet_builder(corpus, raw, tmp_path):
    manifest = datasets.load_dataset("parquet", data_files=str(corpus.output / "shard-*.parquet"),
                                     split="train", cache_dir=str(tmp_path))
    assert sorted(manifest["key"]) == sorted(corpus.ok_keys)
    for row in manifest:
        info = json.loads(raw[row["key"]]["json"])
        assert json.loads(row["meta"]) == info["meta"] and row["vast_cap"] == info["vast_cap"]
        assert (row["has_audio"], row["has_video"], row["duration"]) == (
            info["has_audio"], info["has_video"], info["duration"])


def _frames(data: bytes) -> int:
    import decord

    return len(decord.VideoReader(io.BytesIO(data)))


def _samples(data: bytes) -> int:
    import torchaudio

    waveform, rate = torchaudio.load(io.BytesIO(data))
    assert rate == 16000
    return waveform.shape[-1]


def test_plain_webdataset_into_a_dataloader_with_two_workers(corpus, raw):
    urls = sorted(str(p) for p in corpus.output.glob("shard-*.tar"))
    dataset = (wds.WebDataset(urls, shardshuffle=False)
               .decode(wds.handle_extension("mp4", _frames), wds.handle_extension("flac", _samples))
               .to_tuple("__key__", "json", "txt", "mp4", "flac"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    seen = {}
    for key, info, txt, frames, samples in loader:
        assert key not in seen
        seen[key] = (info, txt, frames, samples)
    assert set(seen) == corpus.ok_keys
    for key, (info, txt, frames, samples) in seen.items():
        assert info == json.loads(raw[key]["json"]) and txt == raw[key]["txt"].decode()
        assert samples == round(keyed_seconds(key) * 16000)
        assert frames >= 1
