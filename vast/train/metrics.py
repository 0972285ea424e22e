"""Evaluation metrics: retrieval recall/median rank, COCO caption metrics, QA exact match.

BLEU, ROUGE-L and CIDEr-D follow the COCO caption evaluation (``pycocoevalcap``) exactly, minus
its Java tokenizer: texts are lower-cased, punctuation is dropped and words split on whitespace.
BLEU is corpus-level with the closest reference length for the brevity penalty; ROUGE-L is the
mean sentence LCS F-score with beta 1.2; CIDEr-D uses tf-idf n-grams (1-4) with document
frequencies from the references passed (score a whole split in one call), clipped counts and a
Gaussian length penalty (sigma 6), times 10. METEOR needs Java: :func:`meteor` uses pycocoevalcap
when it and ``java`` are available and returns None otherwise.
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter, defaultdict

import numpy as np
import torch

_PUNCT = re.compile(r"[^\w\s]")


def words(text: str) -> list[str]:
    """COCO-style tokens: lower case, punctuation removed, whitespace split."""
    return _PUNCT.sub(" ", text.lower()).split()


def ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(candidates: list[str], references: list[list[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..max_n (as pycocoevalcap: clipped counts, closest ref length, its smoothing)."""
    match, total = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for cand, refs in zip(candidates, references, strict=True):
        c, rs = words(cand), [words(r) for r in refs]
        cand_len += len(c)
        ref_len += min((abs(len(r) - len(c)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            counts = ngrams(c, n)
            best: Counter[tuple[str, ...]] = Counter()
            for r in rs:
                best |= ngrams(r, n)
            match[n - 1] += sum(min(k, best[g]) for g, k in counts.items())
            total[n - 1] += max(len(c) - n + 1, 0)
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's smoothing of empty counts
    ratio = (cand_len + tiny) / (ref_len + small)
    bp = 1.0 if ratio >= 1 else math.exp(1 - 1 / ratio)
    out, prod = [], 1.0
    for n in range(max_n):
        prod *= (match[n] + tiny) / (total[n] + small)
        out.append(bp * prod ** (1 / (n + 1)))
    return out


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidates: list[str], references: list[list[str]], beta: float = 1.2) -> float:
    """Mean sentence ROUGE-L F-score: best precision and best recall over the references."""
    scores = []
    for cand, refs in zip(candidates, references, strict=True):
        c = words(cand)
        precs, recs = [], []
        for r in map(words, refs):
            lcs = _lcs(c, r)
            precs.append(lcs / len(c) if c else 0.0)
            recs.append(lcs / len(r) if r else 0.0)
        p, r = max(precs), max(recs)
        scores.append((1 + beta**2) * p * r / (r + beta**2 * p) if p > 0 and r > 0 else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def cider_d(candidates: list[str], references: list[list[str]], sigma: float = 6.0, max_n: int = 4) -> float:
    """CIDEr-D over a whole split (document frequencies come from these references)."""
    def grams(text: str) -> Counter[tuple[str, ...]]:
        toks = words(text)
        out: Counter[tuple[str, ...]] = Counter()
        for n in range(1, max_n + 1):
            out.update(ngrams(toks, n))
        return out

    cands = [grams(c) for c in candidates]
    refs = [[grams(r) for r in rs] for rs in references]
    df: Counter[tuple[str, ...]] = Counter()
    for rs in refs:
        df.update({g for r in rs for g in r})
    log_n = math.log(float(len(refs))) if refs else 0.0

    def vec(counts: Counter[tuple[str, ...]]) -> tuple[list[dict], list[float], int]:
        v: list[dict] = [defaultdict(float) for _ in range(max_n)]
        norm = [0.0] * max_n
        length = 0
        for g, tf in counts.items():
            n = len(g) - 1
            v[n][g] = tf * (log_n - math.log(max(1.0, df[g])))
            norm[n] += v[n][g] ** 2
            if n == 1:  # as pycocoevalcap: the length is counted in bigrams
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for c, rs in zip(cands, refs, strict=True):
        vc, nc, lc = vec(c)
        total = np.zeros(max_n)
        for r in rs:
            vr, nr, lr = vec(r)
            for n in range(max_n):
                val = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vc[n].items())
                if nc[n] and nr[n]:
                    val /= nc[n] * nr[n]
                total[n] += val * math.exp(-((lc - lr) ** 2) / (2 * sigma**2))
        scores.append(float(np.mean(total)) / len(rs) * 10.0)
    return float(np.mean(scores)) if scores else 0.0


def meteor(candidates: list[str], references: list[list[str]]) -> float | None:
    """METEOR through pycocoevalcap's Java scorer; None when pycocoevalcap or java is missing."""
    if shutil.which("java") is None:
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError:
        return None
    gts = {i: [" ".join(words(r)) for r in rs] for i, rs in enumerate(references)}
    res = {i: [" ".join(words(c))] for i, c in enumerate(candidates)}
    score, _ = Meteor().compute_score(gts, res)
    return float(score)


def caption_metrics(candidates: list[str], references: list[list[str]], with_meteor: bool = True
                    ) -> dict[str, float]:
    """BLEU-4, METEOR (if asked and Java is available), ROUGE-L and CIDEr-D of a whole split, as in COCO."""
    out = {"bleu4": bleu(candidates, references)[3], "rouge_l": rouge_l(candidates, references),
           "cider": cider_d(candidates, references)}
    m = meteor(candidates, references) if with_meteor else None
    if m is not None:
        out["meteor"] = m
    return out


def t2v_ranks(scores: torch.Tensor, text_to_item: list[int]) -> torch.Tensor:
    """0-based rank of each text's own item among all items, by descending score (Nt,).

    Upstream ``evaluation/evaluation_mm.py::compute_metric_ret`` (direction ``forward``, reported as
    ``video_*``): one rank per TEXT, every caption of a multi-caption set counted.
    """
    gt = torch.as_tensor(text_to_item)
    order = scores.float().argsort(dim=1, descending=True)  # (Nt, Ni)
    return (order == gt[:, None]).float().argmax(1)


def v2t_ranks(scores: torch.Tensor, text_to_item: list[int]) -> torch.Tensor:
    """0-based rank of each item's BEST text among all texts (Ni,) (upstream direction ``backward``)."""
    gt = torch.as_tensor(text_to_item)
    order = scores.float().t().argsort(dim=1, descending=True)  # (Ni, Nt)
    owner = gt[order]  # item each ranked text belongs to
    return (owner == torch.arange(scores.shape[1])[:, None]).float().argmax(1)


def recall_metrics(ranks: torch.Tensor) -> dict[str, float]:
    """R@1/5/10 and their mean ``ravg`` (percent of queries), median rank (1-based; torch's lower median)."""
    out = {f"r{k}": 100.0 * float((ranks < k).float().mean()) for k in (1, 5, 10)}
    out["ravg"] = (out["r1"] + out["r5"] + out["r10"]) / 3
    out["medr"] = float((ranks + 1).float().median())
    return out


def exact_match(predictions: list[str], answers: list[str], normalize: bool = False) -> float:
    """QA accuracy in percent. Upstream (``evaluate_qa``): the decoded answer string equals the answer.

    ``normalize`` (ours): compare lower-cased, punctuation-free, whitespace-joined words instead.
    """
    norm = (lambda s: " ".join(words(s))) if normalize else (lambda s: s)  # noqa: E731
    hits = [norm(p) == norm(a) for p, a in zip(predictions, answers, strict=True)]
    return 100.0 * sum(hits) / len(hits) if hits else 0.0
