"""Decoding with the VAST caption decoder: greedy, beam search with length penalty, top-k sampling.

VAST generates by appending a [MASK] to the tokens so far and predicting it under the causal
mask. With a KV cache each step feeds two tokens, the word just chosen (kept in the cache) and
the new [MASK] (forgotten), so a step costs two token positions instead of the whole prefix;
the cross-attention keys of the memory are computed once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .text import BertForMaskedLM, KVCache


@dataclass
class GenerationConfig:
    """How to decode: ``greedy``, ``beam`` (eval default: beam 3, length penalty 0.6) or ``sample``."""

    strategy: str = "beam"
    max_len: int = 40
    """Most generated tokens, the final [SEP] included."""
    beam_size: int = 3
    length_penalty: float = 0.6
    """A finished beam scores sum(log p) / length ** length_penalty, length = prefix + words without
    the final [SEP] (the rule of Hugging Face ``generate``, which upstream VAST decoded with)."""
    top_k: int = 10
    temperature: float = 1.0
    num_return: int = 1
    """Sequences per item (sampling only; the captioners use 3)."""


# How VAST labelled VAST-27M: top-k sampling, k=10, three captions per clip.
CAPTIONER_SAMPLING = GenerationConfig(strategy="sample", top_k=10, num_return=3, max_len=40)


class MaskDecoder:
    """Incremental [MASK]-prediction decoding of ``copies`` rows per item, sharing one cache.

    The memory's cross-attention keys/values are computed once per item and repeated for its
    copies (beams or samples); rows are only ever reordered among copies of the same item.
    """

    def __init__(
        self,
        text: BertForMaskedLM,
        memory: torch.Tensor,  # (B, M, C)
        memory_valid: torch.Tensor | None,  # (B, M)
        prefix_ids: torch.Tensor,  # (B, P)
        prefix_valid: torch.Tensor,  # (B, P)
        copies: int = 1,
        bidirectional_len: int = 0,
    ):
        self.text, self.copies = text, copies
        self.prefix_ids = prefix_ids.repeat_interleave(copies, 0)  # (R, P), R = B * copies
        self.prefix_valid = prefix_valid.repeat_interleave(copies, 0)
        self.memory_valid = None if memory_valid is None else memory_valid.repeat_interleave(copies, 0)
        self.bidirectional_len = bidirectional_len
        self.mask_id = text.cfg.mask_token_id
        self.cache = KVCache()
        self.cache.cross_kv = [
            tuple(t.repeat_interleave(copies, 0) for t in layer.crossattention.self.kv(memory))
            for layer in text.bert.encoder.layer
        ]

    def start(self) -> torch.Tensor:
        """Logits (R, V) of the first token after the prefix."""
        R, P = self.prefix_ids.shape
        mask_col = torch.full((R, 1), self.mask_id, dtype=torch.long, device=self.prefix_ids.device)
        ids = torch.cat([self.prefix_ids, mask_col], dim=1)
        valid = torch.cat([self.prefix_valid, torch.ones_like(mask_col, dtype=torch.bool)], dim=1)
        prefix_len = None
        if self.bidirectional_len:
            prefix_len = torch.full((R,), self.bidirectional_len, device=ids.device)
        h = self.text.encode(
            ids,
            valid,
            None,
            self.memory_valid,
            causal=True,
            prefix_len=prefix_len,
            cache=self.cache,
            commit=P,
        )
        return self.text.logits(h[:, -1])

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Commit ``tokens`` (R,) and return the logits (R, V) of the next position."""
        ids = torch.stack([tokens, torch.full_like(tokens, self.mask_id)], dim=1)  # (R, 2)
        h = self.text.encode(ids, None, None, self.memory_valid, causal=True, cache=self.cache, commit=1)
        return self.text.logits(h[:, -1])

    def reorder(self, index: torch.Tensor) -> None:
        """Row r continues row ``index[r]``, a copy of the same item (memory rows stay put)."""
        rows = torch.arange(index.numel(), device=index.device)
        assert bool((index // self.copies == rows // self.copies).all()), "rows moved across items"
        self.cache = self.cache.reorder(index, cross=False)


@torch.no_grad()
def generate(
    text: BertForMaskedLM,
    memory: torch.Tensor,
    memory_valid: torch.Tensor | None,
    prefix_ids: torch.Tensor,
    prefix_valid: torch.Tensor,
    cfg: GenerationConfig,
    bidirectional_len: int = 0,
    generator: torch.Generator | None = None,
) -> list[list[list[int]]]:
    """Generate after ``prefix_ids`` (B, P) attending to ``memory`` (B, M, C).

    The first ``bidirectional_len`` prefix tokens attend to each other both ways (the QA question).
    Returns, per item, ``num_return`` (sampling) or one (greedy, beam) token-id lists, without
    the prefix and the final [SEP].
    """
    if cfg.strategy == "beam":
        return _beam_search(text, memory, memory_valid, prefix_ids, prefix_valid, cfg, bidirectional_len)
    if cfg.strategy not in ("greedy", "sample"):
        raise ValueError(f"unknown decoding strategy {cfg.strategy!r}; use greedy, beam or sample")
    n = cfg.num_return if cfg.strategy == "sample" else 1
    B = prefix_ids.shape[0]
    dec = MaskDecoder(text, memory, memory_valid, prefix_ids, prefix_valid, n, bidirectional_len)
    sep, pad = text.cfg.sep_token_id, text.cfg.pad_token_id
    logits = dec.start()
    out = []
    done = torch.zeros(B * n, dtype=torch.bool, device=prefix_ids.device)
    for i in range(cfg.max_len):
        if cfg.strategy == "greedy":
            tok = logits.argmax(-1)
        else:
            top, idx = (logits.float() / cfg.temperature).topk(cfg.top_k, dim=-1)
            tok = idx.gather(1, torch.multinomial(F.softmax(top, -1), 1, generator=generator)).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, pad), tok)
        out.append(tok)
        done = done | (tok == sep)
        if bool(done.all()) or i == cfg.max_len - 1:
            break
        logits = dec.step(tok)
    rows = torch.stack(out, dim=1).tolist()  # (B*n, steps)
    seqs = [_until(r, sep, pad) for r in rows]
    return [seqs[b * n : (b + 1) * n] for b in range(B)]


def _until(tokens: list[int], sep: int, pad: int) -> list[int]:
    out = []
    for t in tokens:
        if t in (sep, pad):
            break
        out.append(t)
    return out


class _Finished:
    """The best ``k`` finished hypotheses of one item, length-normalised."""

    def __init__(self, k: int, length_penalty: float):
        self.k, self.alpha = k, length_penalty
        self.hyps: list[tuple[float, list[int]]] = []

    def add(self, sum_logp: float, length: int, tokens: list[int]) -> None:
        score = sum_logp / length**self.alpha
        if len(self.hyps) < self.k or score > self.worst:
            self.hyps = sorted([*self.hyps, (score, tokens)], key=lambda h: -h[0])[: self.k]

    @property
    def worst(self) -> float:
        return self.hyps[-1][0] if self.hyps else float("inf")

    def is_done(self, best_sum_logp: float, length: int) -> bool:
        """No open beam can still beat the worst kept hypothesis (never before k are kept)."""
        return len(self.hyps) >= self.k and self.worst >= best_sum_logp / length**self.alpha


def _beam_search(
    text: BertForMaskedLM,
    memory: torch.Tensor,
    memory_valid: torch.Tensor | None,
    prefix_ids: torch.Tensor,
    prefix_valid: torch.Tensor,
    cfg: GenerationConfig,
    bidirectional_len: int,
) -> list[list[list[int]]]:
    B, P, K = *prefix_ids.shape, cfg.beam_size
    sep, pad = text.cfg.sep_token_id, text.cfg.pad_token_id
    dev = prefix_ids.device
    dec = MaskDecoder(text, memory, memory_valid, prefix_ids, prefix_valid, K, bidirectional_len)
    logp = F.log_softmax(dec.start().float(), dim=-1)  # (B*K, V)
    V = logp.shape[-1]
    beam_scores = torch.full((B, K), float("-inf"), device=dev)
    beam_scores[:, 0] = 0  # all beams start identical: expand only the first
    seqs: list[list[int]] = [[] for _ in range(B * K)]
    finished = [_Finished(K, cfg.length_penalty) for _ in range(B)]
    done = [False] * B
    for step in range(cfg.max_len):
        cand = (beam_scores.view(-1, 1) + logp).view(B, K * V)
        top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)
        top_scores, top_beam, top_tok = top_scores.tolist(), (top_idx // V).tolist(), (top_idx % V).tolist()
        next_scores = [[float("-inf")] * K for _ in range(B)]
        next_rows = [[b * K] * K for b in range(B)]
        next_toks = [[pad] * K for _ in range(B)]
        for b in range(B):
            if done[b]:
                continue
            j = 0
            for rank, (score, beam, tok) in enumerate(
                zip(top_scores[b], top_beam[b], top_tok[b], strict=True)
            ):
                if score == float("-inf"):
                    break
                if tok == sep:
                    if rank < K:  # an ending counts only if it is among the K best candidates
                        finished[b].add(score, P + step, seqs[b * K + beam])
                    continue
                next_scores[b][j], next_rows[b][j], next_toks[b][j] = score, b * K + beam, tok
                j += 1
                if j == K:
                    break
            done[b] = finished[b].is_done(top_scores[b][0], P + step)
        if all(done):
            break
        rows = torch.tensor(next_rows, device=dev).view(-1)
        toks = torch.tensor(next_toks, device=dev).view(-1)
        seqs = [seqs[r] + [t] for r, t in zip(rows.tolist(), toks.tolist(), strict=True)]
        beam_scores = torch.tensor(next_scores, device=dev)
        if step == cfg.max_len - 1:
            break
        dec.reorder(rows)
        logp = F.log_softmax(dec.step(toks).float(), dim=-1)
    for b in range(B):  # out of length: the open beams compete with the finished ones
        if not done[b]:
            for k in range(K):
                if beam_scores[b, k] > float("-inf"):
                    finished[b].add(float(beam_scores[b, k]), P + len(seqs[b * K + k]), seqs[b * K + k])
    return [[f.hyps[0][1] if f.hyps else []] for f in finished]
