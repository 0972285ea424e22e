"""Trainer test fixtures: one thread (2 shared cores), the test vocabulary, the test shards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.shardgen import downstream_shards, shard_urls, vast27m_shards, vocab_dir

torch.set_num_threads(1)
torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def vocab(tmp_path_factory) -> Path:
    return vocab_dir(tmp_path_factory.mktemp("vocab"))


def tiny_overrides(vocab: Path, output: Path, shards: Path, **more) -> dict:
    """Overrides that point a tiny preset at the test shards, vocabulary and a run directory."""
    corpora = [{"urls": shard_urls(shards)}]
    return {"model.tokenizer": str(vocab), "output": str(output), "data.train.corpora": corpora,
            "data.valid.corpora": corpora, **more}


@pytest.fixture(scope="session")
def ds_shards() -> Path:
    return downstream_shards()


@pytest.fixture(scope="session")
def pretrain_shards() -> Path:
    return vast27m_shards()
