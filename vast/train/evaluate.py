"""Validation and testing: retrieval, captioning and QA scores on the validation shards.

Each task of the test task string is scored on its first modality group:
- ``ret``: R@1/5/10 and median rank both directions. Contrastive similarity of every text against
  every item, then the matching head re-scores each text's top ``rerank_k`` items (as
  ``VAST.retrieval_scores``, but item batch by item batch, so memory holds one batch of
  cross-attention memory, not the whole split).
- ``cap``: BLEU-4/ROUGE-L/CIDEr-D (+ METEOR when asked and Java is available) over the whole split
  in one call; beam search with the configured beam size, length penalty 0.6.
- ``qa``: exact-match accuracy over every (question, answer) pair of every clip.
Runs on one process (rank 0 under DDP).
"""

from __future__ import annotations

from typing import Any

import torch

from vast.model.generation import GenerationConfig
from vast.model.tasks import condition_of, parse_task
from vast.shards.reader import ShardStream, make_loader
from vast.train import metrics as M
from vast.train.config import TrainConfig, decode_spec


def valid_batches(cfg: TrainConfig, task: str) -> list[dict[str, Any]]:
    """Every validation sample once, in shard order, decoded for testing (middle frames)."""

    if cfg.data.valid is None:
        raise ValueError("no validation data configured (data.valid)")
    stream = ShardStream(cfg.data.valid, decode_spec(cfg, False, task), cfg.test_batch_size,
                         drop_last=False)
    return list(make_loader(stream))


@torch.no_grad()
def retrieval_scores(model: Any, batches: list[dict[str, Any]], texts: list[str], group: str,
                     rerank_k: int, chunk: int = 64) -> torch.Tensor:
    """Text-to-item scores (Nt, Ni): contrastive similarity, top ``rerank_k`` per text re-scored.

    Re-scored pairs get the matching head's match probability and rank above all others.
    """
    cond = condition_of(group)
    feat_c = torch.cat([model.condition_feature(model.encode(b, set(cond)), cond).float() for b in batches])
    ids, valid = model.tokens(texts, model.cfg.max_caption_len)
    feat_t = torch.cat([
        model.text_feature(model.encode_text(ids[i : i + chunk], valid[i : i + chunk])).float()
        for i in range(0, len(texts), chunk)
    ])
    sim = feat_t @ feat_c.t()  # (Nt, Ni)
    if rerank_k <= 0:
        return sim
    top = sim.topk(min(rerank_k, sim.shape[1]), dim=1).indices  # (Nt, k)
    scores = sim - 1e4
    offset = 0
    for b in batches:  # the cross-attention memory of one item batch at a time
        mem, mem_valid = model.memory(model.encode(b, set(cond)), cond)
        n = mem.shape[0]
        t_idx, j = ((top >= offset) & (top < offset + n)).nonzero(as_tuple=True)
        c_idx = top[t_idx, j]
        for i in range(0, t_idx.numel(), chunk):
            t, c = t_idx[i : i + chunk], c_idx[i : i + chunk]
            logits = model.match_logits(ids[t], valid[t], mem[c - offset], mem_valid[c - offset])
            scores[t, c] = logits.float().softmax(-1)[:, 1]
        offset += n
    return scores


def qa_batches(batches: list[dict[str, Any]], size: int) -> list[dict[str, Any]]:
    """One row per (clip, question): media repeated for each of a clip's QA pairs, ``size`` rows a batch."""
    rows = [(b, i, q, a) for b in batches for i, pairs in enumerate(b["qa"]) for q, a in pairs]
    out = []
    for s in range(0, len(rows), size):
        part = rows[s : s + size]
        batch: dict[str, Any] = {"question": [q for _, _, q, _ in part], "answer": [a for *_, a in part]}
        for k in ("frames", "audio"):
            if k in part[0][0]:
                batch[k] = torch.stack([b[k][i] for b, i, _, _ in part])
        batch["subtitle"] = [b["subtitle"][i] for b, i, _, _ in part]
        out.append(batch)
    return out


@torch.no_grad()
def evaluate(model: Any, cfg: TrainConfig, task: str) -> dict[str, float]:
    """Scores of ``model`` for every task of ``task`` on ``cfg.data.valid`` (keys prefixed by kind)."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    for t in parse_task(task):
        group = t.groups[0]
        batches = valid_batches(cfg, str(t))
        if t.kind == "ret":
            key = "text" if "text" in batches[0] else "omni_caption"
            texts = [x for b in batches for x in b[key]]
            scores = retrieval_scores(model, batches, texts, group, cfg.rerank_k)
            res = M.retrieval_metrics(scores.cpu(), list(range(len(texts))))
        elif t.kind == "cap":
            gen = GenerationConfig(strategy="beam", beam_size=cfg.beam_size, length_penalty=0.6,
                                   max_len=cfg.max_generation_len)
            cands, refs = [], []
            for b in batches:
                cands += [caps[0] for caps in model.caption(b, group, gen)]
                refs += b["refs"]
            res = M.caption_metrics(cands, refs, with_meteor=cfg.meteor)
        else:
            preds, answers = [], []
            for b in qa_batches(batches, cfg.test_batch_size):
                preds += [model.decode(ids) for ids in model.answer(b, group)]
                answers += b["answer"]
            res = {"accuracy": M.exact_match(preds, answers), "questions": float(len(answers))}
        out.update({f"{t.kind}_{k}": v for k, v in res.items()})
    model.train(was_training)
    return out
