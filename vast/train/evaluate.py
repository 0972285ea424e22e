"""Validation and testing: retrieval, captioning and QA scores on the validation shards.

The protocol is upstream's (``evaluation/evaluation_mm.py``): EVERY modality group of every task
of the test task string is scored, and metric names say which: ``ret_tvas_itm_t2v_r1``,
``cap_tv_cider``, ``qa_tva_accuracy``.

- ``ret``: every caption of every item is a query (multi-caption sets such as MSVD and VATEX:
  all ``desc`` captions, each mapped to its item). ``itc``: contrastive similarity of every text
  against every item. ``itm``: each text's top ``rerank_k`` items re-scored by the matching head
  (``refine_score_matrix``); past rank k the contrastive order is kept where upstream leaves
  ties at 0 (ranks 1..k, so R@1/5/10, are the same). t2v ranks each text's item among all items
  (one query per caption); with ``ret_bidirection_evaluation`` (off upstream) v2t ranks each
  item's best caption among all texts, re-ranking each item's own top ``rerank_k`` texts.
  R@1/5/10, their mean (``ravg``) and the median rank. Cross-attention memory is built one item
  batch at a time, so memory holds one batch, not the whole split.
- ``cap``: BLEU-4/ROUGE-L/CIDEr-D (+ METEOR when asked and Java is available) over the whole split
  in one call; beam search with the configured beam size, length penalty 0.6.
- ``qa``: every (question, answer) pair of every clip; accuracy = the decoded answer string equals
  the answer (``qa_normalize`` compares normalised words instead).
Runs on one process (rank 0 under DDP).
"""

from __future__ import annotations

from typing import Any

import torch

from vast.model.generation import GenerationConfig
from vast.model.tasks import Task, condition_of, parse_task
from vast.shards.reader import ShardStream, make_loader, samples_of
from vast.train import metrics as M
from vast.train.config import TrainConfig, decode_spec


def valid_batches(cfg: TrainConfig, task: str) -> list[dict[str, Any]]:
    """Every validation sample once, in shard order, decoded for testing (middle frames)."""
    if cfg.data.valid is None:
        raise ValueError("no validation data configured (data.valid)")
    stream = ShardStream(cfg.data.valid, decode_spec(cfg, False, task), cfg.test_batch_size,
                         drop_last=False)
    return [b for b in make_loader(stream) if samples_of(b)]


def retrieval_texts(batches: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """Every caption of every item (``refs``; else the item's one text) and the item each belongs to."""
    texts, owner, item = [], [], 0
    for b in batches:
        key = "refs" if "refs" in b else "text" if "text" in b else "omni_caption"
        for caps in b[key]:
            caps = [caps] if isinstance(caps, str) else list(caps)
            texts += caps
            owner += [item] * len(caps)
            item += 1
    return texts, owner


@torch.no_grad()
def match_probabilities(model: Any, batches: list[dict[str, Any]], ids: torch.Tensor, valid: torch.Tensor,
                        pairs: torch.Tensor, group: str, chunk: int = 64) -> torch.Tensor:
    """Matching probability of each (text, item) pair (P, 2) -> (P,), one item batch's memory at a time."""
    cond = condition_of(group)
    out = torch.zeros(pairs.shape[0])
    offset = 0
    for b in batches:
        mem, mem_valid = model.memory(model.encode(b, set(cond)), cond)
        n = mem.shape[0]
        rows = ((pairs[:, 1] >= offset) & (pairs[:, 1] < offset + n)).nonzero(as_tuple=True)[0]
        for i in range(0, rows.numel(), chunk):
            r = rows[i : i + chunk]
            t, c = pairs[r, 0], pairs[r, 1] - offset
            logits = model.match_logits(ids[t], valid[t], mem[c], mem_valid[c])
            out[r] = logits.float().softmax(-1)[:, 1].cpu()
        offset += n
    return out


def rerank(sim: torch.Tensor, probs: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Scores with the re-scored pairs at their match probability, above every other (contrastive) entry."""
    scores = sim - 1e4
    scores[pairs[:, 0], pairs[:, 1]] = probs
    return scores


@torch.no_grad()
def retrieval_eval(model: Any, batches: list[dict[str, Any]], group: str, rerank_k: int,
                   bidirectional: bool = False, chunk: int = 64) -> dict[str, float]:
    """``itc_*`` and (with ``rerank_k`` > 0) ``itm_*`` retrieval metrics of one modality group."""
    cond = condition_of(group)
    texts, owner = retrieval_texts(batches)
    feat_c = torch.cat([model.condition_feature(model.encode(b, set(cond)), cond).float() for b in batches])
    ids, valid = model.tokens(texts, model.cfg.max_caption_len)
    feat_t = torch.cat([
        model.text_feature(model.encode_text(ids[i : i + chunk], valid[i : i + chunk])).float()
        for i in range(0, len(texts), chunk)
    ])
    sim = (feat_t @ feat_c.t()).cpu()  # (Nt, Ni)
    directions = ("t2v", "v2t") if bidirectional else ("t2v",)
    ranks = {"t2v": M.t2v_ranks, "v2t": M.v2t_ranks}
    out = {}
    for d in directions:
        out |= {f"itc_{d}_{k}": v for k, v in M.recall_metrics(ranks[d](sim, owner)).items()}
    if rerank_k <= 0:
        return out
    for d in directions:
        if d == "t2v":  # each text's top k items
            top = sim.topk(min(rerank_k, sim.shape[1]), dim=1).indices  # (Nt, k)
            rows = torch.arange(sim.shape[0]).repeat_interleave(top.shape[1])
            pairs = torch.stack([rows, top.reshape(-1)], 1)
        else:  # each item's top k texts
            top = sim.topk(min(rerank_k, sim.shape[0]), dim=0).indices  # (k, Ni)
            cols = torch.arange(sim.shape[1]).repeat_interleave(top.shape[0])
            pairs = torch.stack([top.t().reshape(-1), cols], 1)
        scores = rerank(sim, match_probabilities(model, batches, ids, valid, pairs, group, chunk), pairs)
        out |= {f"itm_{d}_{k}": v for k, v in M.recall_metrics(ranks[d](scores, owner)).items()}
    return out


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


def headline(task: Task, group: str, rerank_k: int) -> str:
    """The metric that says "better" for one task and group (upstream ``get_best_name``)."""
    if task.kind == "ret":
        return f"ret_{group}_{'itm' if rerank_k > 0 else 'itc'}_t2v_r1"
    return f"cap_{group}_cider" if task.kind == "cap" else f"qa_{group}_accuracy"


@torch.no_grad()
def evaluate(model: Any, cfg: TrainConfig, task: str) -> dict[str, float]:
    """Scores of ``model`` for every group of every task of ``task`` on ``cfg.data.valid``."""
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    for t in parse_task(task):
        batches = valid_batches(cfg, str(t))
        for group in t.groups:
            if t.kind == "ret":
                res = retrieval_eval(model, batches, group, cfg.rerank_k, cfg.ret_bidirection_evaluation)
            elif t.kind == "cap":
                gen = GenerationConfig(strategy="beam", beam_size=cfg.beam_size, length_penalty=0.6,
                                       max_len=cfg.max_generation_len)
                cands, refs = [], []
                for b in batches:
                    cands += [caps[0] for caps in model.caption(b, group, gen)]
                    refs += b["refs"]
                res = M.caption_metrics(cands, refs, with_meteor=cfg.meteor)
            else:
                gen = GenerationConfig(strategy="beam", beam_size=cfg.beam_size, length_penalty=1.0,
                                       max_len=model.cfg.max_answer_len)
                preds, answers = [], []
                for b in qa_batches(batches, cfg.test_batch_size):
                    preds += [model.decode(ids) for ids in model.answer(b, group, gen)]
                    answers += b["answer"]
                res = {"accuracy": M.exact_match(preds, answers, cfg.qa_normalize),
                       "questions": float(len(answers))}
            out.update({f"{t.kind}_{group}_{k}": v for k, v in res.items()})
    model.train(was_training)
    return out
