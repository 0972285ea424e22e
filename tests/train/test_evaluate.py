"""Evaluation helpers against the model's own whole-batch inference."""

from __future__ import annotations

import torch

from tests.train.shardgen import shard_urls
from vast.shards.reader import CorpusConfig, DecodeSpec, ReaderConfig, ShardStream
from vast.train.config import ModelConfig
from vast.train.evaluate import qa_batches, retrieval_scores
from vast.train.trainer import build_model


def _batches(shards, batch_size):
    cfg = ReaderConfig(corpora=[CorpusConfig(urls=shard_urls(shards))], resampled=False, num_workers=0)
    return list(ShardStream(cfg, DecodeSpec(num_frames=2, image_size=32, train=False), batch_size))


def test_batchwise_retrieval_scores_equal_the_whole_batch_call(vocab, ds_shards):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", tokenizer=str(vocab)), torch.device("cpu")).eval()
    batches = _batches(ds_shards, 2)  # two item batches
    texts = [t for b in batches for t in b["text"]]
    whole = {k: torch.cat([b[k] for b in batches]) for k in ("frames", "audio")}
    whole["subtitle"] = [s for b in batches for s in b["subtitle"]]
    for k in (0, 2, 4):
        want = model.retrieval_scores(texts, whole, "tva", rerank_k=k)
        got = retrieval_scores(model, batches, texts, "tva", rerank_k=k, chunk=3)
        assert torch.allclose(got, want, atol=1e-5), k


def test_every_question_of_a_clip_is_asked():
    b = {"frames": torch.arange(2.0).view(2, 1), "subtitle": ["", ""],
         "qa": [[("q1", "a1"), ("q2", "a2")], [("q3", "a3")]]}
    rows = qa_batches([b], size=2)
    assert [r["question"] for r in rows] == [["q1", "q2"], ["q3"]]
    assert [r["answer"] for r in rows] == [["a1", "a2"], ["a3"]]
    assert rows[0]["frames"].view(-1).tolist() == [0.0, 0.0] and rows[1]["frames"].view(-1).tolist() == [1.0]
