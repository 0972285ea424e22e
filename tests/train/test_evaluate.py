"""Evaluation: batch-by-batch retrieval against the model's whole-batch call, every caption a query."""

from __future__ import annotations

import torch

from tests.train.shardgen import shard_urls
from vast.shards.reader import CorpusConfig, DecodeSpec, ReaderConfig, ShardStream, samples_of
from vast.train import metrics as M
from vast.train.config import ModelConfig
from vast.train.evaluate import qa_batches, retrieval_eval, retrieval_texts
from vast.train.trainer import build_model


def _batches(shards, batch_size):
    cfg = ReaderConfig(corpora=[CorpusConfig(urls=shard_urls(shards))], resampled=False, num_workers=0)
    stream = ShardStream(cfg, DecodeSpec(num_frames=2, image_size=32, train=False), batch_size)
    return [b for b in stream if samples_of(b)]


def test_every_caption_is_a_query_and_batchwise_scores_equal_the_whole_batch_call(vocab, ds_shards):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", tokenizer=str(vocab)), torch.device("cpu")).eval()
    batches = _batches(ds_shards, 2)  # two item batches
    texts, owner = retrieval_texts(batches)
    assert len(texts) == 8 and owner == [0, 0, 1, 1, 2, 2, 3, 3]  # 2 captions per clip, all scored
    whole = {k: torch.cat([b[k] for b in batches]) for k in ("frames", "audio")}
    whole["subtitle"] = [s for b in batches for s in b["subtitle"]]
    for k in (0, 2, 4):
        want = model.retrieval_scores(texts, whole, "tva", rerank_k=k)  # one call over every item
        got = retrieval_eval(model, batches, "tva", rerank_k=k, bidirectional=True, chunk=3)
        kind = "itm" if k else "itc"
        for name, value in M.recall_metrics(M.t2v_ranks(want, owner)).items():
            assert got[f"{kind}_t2v_{name}"] == value, (k, name)
        if not k:
            for name, value in M.recall_metrics(M.v2t_ranks(want, owner)).items():
                assert got[f"itc_v2t_{name}"] == value
    assert "itm_v2t_r1" in got


def test_every_question_of_a_clip_is_asked():
    b = {"frames": torch.arange(2.0).view(2, 1), "subtitle": ["", ""],
         "qa": [[("q1", "a1"), ("q2", "a2")], [("q3", "a3")]]}
    rows = qa_batches([b], size=2)
    assert [r["question"] for r in rows] == [["q1", "q2"], ["q3"]]
    assert [r["answer"] for r in rows] == [["a1", "a2"], ["a3"]]
    assert rows[0]["frames"].view(-1).tolist() == [0.0, 0.0] and rows[1]["frames"].view(-1).tolist() == [1.0]
