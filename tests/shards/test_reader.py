"""The training reader on shards packed by ``shards build`` from generated media."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import torch

from tests.train.shardgen import downstream_shards, rewrite_tar, shard_urls, vast27m_shards
from vast.shards.reader import (
    CorpusConfig,
    DataPosition,
    DecodeSpec,
    ReaderConfig,
    ShardStream,
    make_loader,
    mix,
    samples_of,
    texts,
)

torch.set_num_threads(1)
SPEC = DecodeSpec(num_frames=2, image_size=32, train=False)


def read(urls, spec=SPEC, batch_size=1, **cfg) -> list[dict]:
    where = cfg.pop("stream", {})
    cfg = {"resampled": False, "num_workers": 0, **cfg}
    stream = ShardStream(ReaderConfig(corpora=[CorpusConfig(urls=urls)], **cfg), spec, batch_size,
                         drop_last=False, **where)
    return list(make_loader(stream))


def batches_of(records: list[dict]) -> list[dict]:
    return [r for r in records if samples_of(r)]


def test_batches_hold_decoded_media_and_texts_the_model_reads():
    batches = read(shard_urls(downstream_shards()), batch_size=2)
    assert [len(b["key"]) for b in batches] == [2, 2]
    b = batches[0]
    assert b["frames"].shape == (2, 2, 3, 32, 32) and b["audio"].shape == (2, 1, 1024, 64)
    by_key = {k: i for bb in batches for i, k in enumerate(bb["key"])}
    assert set(by_key) == {"red_0_2000", "bars_0_2000", "fractal_0_2000", "grid_0_2000"}
    allb = {k: (bb, i) for bb in batches for i, k in enumerate(bb["key"])}
    grid, i = allb["grid_0_2000"]
    assert grid["audio"][i].abs().sum() == 0  # silent clip -> zeros
    red, j = allb["red_0_2000"]
    assert red["audio"][j].abs().sum() > 0
    assert red["text"][j] == "a red screen hums low"  # test mode: the first caption
    assert red["question"][j] == "what color is it" and red["answer"][j] == "red"
    assert red["refs"][j] == ["a red screen hums low", "red light and a low hum"]
    # distinct clips decode to distinct frames
    assert not torch.allclose(red["frames"][j], grid["frames"][i])


def test_test_mode_is_deterministic_and_train_mode_augments():
    urls = shard_urls(downstream_shards())
    a, b = read(urls), read(urls)
    assert all(torch.equal(x["frames"], y["frames"]) for x, y in zip(a, b, strict=True))
    train = DecodeSpec(num_frames=2, image_size=32, train=True)
    t = read(urls, spec=train, shuffle_buffer=0, seed=1)
    test_frames = {x["key"][0]: x["frames"] for x in a}
    assert {x["key"][0] for x in t} == set(test_frames)
    assert any(not torch.equal(x["frames"], test_frames[x["key"][0]]) for x in t)


def test_vast27m_fields_become_the_grouped_captions():
    b = read(shard_urls(vast27m_shards()), batch_size=4)[0]
    i = b["key"].index("red_0_2000")
    assert b["omni_caption"][i] == "a red screen hums low"
    assert b["vision_caption"][i] == "a red screen hums low"
    assert b["audio_caption"][i] == "sound of a red screen hums low"


def test_corrupt_and_missing_shards_count_samples_lost_per_shard_path(tmp_path, caplog):
    good = shard_urls(downstream_shards())
    bad_media = tmp_path / "bad-media.tar"
    rewrite_tar(Path(good[0]), bad_media, lambda m: {**m, "mp4": b"\x00" * 64})
    no_mp4 = tmp_path / "no-mp4.tar"
    rewrite_tar(Path(good[1]), no_mp4, lambda m: {k: v for k, v in m.items() if k != "mp4"})
    truncated = tmp_path / "truncated.tar"  # keeps its manifest: 2 samples expected
    shutil.copy(good[1], truncated)
    shutil.copy(Path(good[1]).with_suffix(".parquet"), truncated.with_suffix(".parquet"))
    with open(truncated, "r+b") as f:
        f.truncate(truncated.stat().st_size // 2)
    urls = [str(bad_media), good[1], str(no_mp4), str(tmp_path / "missing.tar"), str(truncated)]
    with caplog.at_level(logging.WARNING, logger="vast.shards.reader"):
        records = read(urls, warn_every_s=3600)
    keys = [k for b in batches_of(records) for k in b["key"]]
    assert sorted(keys) == ["fractal_0_2000", "grid_0_2000"]  # only the intact shard
    # 2 undecodable mp4 + 2 without mp4 + the truncated shard's 2 (known from its manifest)
    assert sum(r["__skipped__"] for r in records) == 6
    lost = {}
    for r in records:
        lost.update(r["__bad_shards__"])
    assert lost == {str(bad_media): 2, str(no_mp4): 2, str(tmp_path / "missing.tar"): None, str(truncated): 2}
    warnings = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1 and str(bad_media) in warnings[0]  # rate-limited, names the shard path
    assert not records[-1]["key"] if "key" in records[-1] else not samples_of(records[-1])


def test_epoch_exact_split_by_node_covers_every_sample_once():
    urls = shard_urls(downstream_shards())
    seen = []
    for rank in (0, 1):
        seen += [k for b in batches_of(read(urls, stream={"rank": rank, "world": 2})) for k in b["key"]]
    assert len(seen) == 4 and len(set(seen)) == 4


def test_fewer_shards_than_ranks_split_by_samples_so_every_rank_has_data():
    urls = shard_urls(downstream_shards())  # 2 shards of 2 samples, with manifests
    assert len(urls) == 2
    per_rank = [[k for b in batches_of(read(urls, stream={"rank": r, "world": 4})) for k in b["key"]]
                for r in range(4)]
    assert [len(k) for k in per_rank] == [1, 1, 1, 1] and len({k[0] for k in per_rank}) == 4
    # 2 ranks x 2 workers with batch 2: a worker would get 1 sample and no batch, so one worker is used
    cfg = ReaderConfig(corpora=[CorpusConfig(urls=urls)], resampled=False, num_workers=2)
    for rank in (0, 1):
        stream = ShardStream(cfg, SPEC, 2, rank=rank, world=2)
        assert stream.workers == 1
        assert [len(b["key"]) for b in make_loader(stream) if samples_of(b)] == [2]


def test_train_mode_draws_one_of_several_answers_per_visit():
    info = {"key": "k", "question": "what is it", "answer": ["red", "crimson"], "desc": "a red screen"}
    drawn = {texts(info, None, True, random.Random(seed))["answer"] for seed in range(20)}
    assert drawn == {"red", "crimson"}
    assert texts(info, None, False, random.Random(0))["answer"] == "red"


def test_fsspec_urls_and_brace_patterns(tmp_path):
    folder = downstream_shards()
    batches = read([f"file://{folder}/shard-{{000000..000001}}.tar"], batch_size=4)
    assert len(batches[0]["key"]) == 4


def test_mixing_follows_the_weights():
    a = iter({"c": "a"} for _ in range(10_000))
    b = iter({"c": "b"} for _ in range(10_000))
    drawn = [s["c"] for _, s in zip(range(4000), mix([a, b], [3.0, 1.0], random.Random(0)), strict=False)]
    assert abs(drawn.count("a") / len(drawn) - 0.75) < 0.03


def test_two_corpora_resampled_stream_draws_from_both():
    cfg = ReaderConfig(corpora=[CorpusConfig(urls=shard_urls(downstream_shards())),
                                CorpusConfig(urls=shard_urls(vast27m_shards()), weight=1.0)],
                       num_workers=0, shuffle_buffer=4)
    stream = ShardStream(cfg, DecodeSpec(num_frames=1, image_size=32, num_audio_clips=0), 1)
    batches = [b for _, b in zip(range(16), stream, strict=False)]
    assert {"vision_caption" in b for b in batches} == {True, False}


def test_resume_continues_the_exact_stream():
    cfg = ReaderConfig(corpora=[CorpusConfig(urls=shard_urls(downstream_shards()))], num_workers=2,
                       shuffle_buffer=3, seed=7)
    spec = DecodeSpec(num_frames=2, image_size=32, num_audio_clips=0, train=True)
    full = [b for _, b in zip(range(7), make_loader(ShardStream(cfg, spec, 2)), strict=False)]
    pos = DataPosition()
    for b in full[:3]:
        pos.update(b)
    resumed = make_loader(ShardStream(cfg, spec, 2, resume=pos.state_dict()))
    rest = [b for _, b in zip(range(4), resumed, strict=False)]
    for x, y in zip(full[3:], rest, strict=True):
        assert x["key"] == y["key"] and torch.equal(x["frames"], y["frames"])
