"""BERT masked-LM with a cross-attention block in every layer, and its tokenizer.

One model serves as text encoder (bidirectional, no cross-attention), subtitle encoder, matching
encoder (bidirectional + cross-attention) and caption decoder (causal + cross-attention).
Parameter names are those of Hugging Face ``BertForMaskedLM`` (``bert.embeddings.*``,
``bert.encoder.layer.N.{attention, crossattention, intermediate, output}.*``, ``cls.predictions.*``)
so ``bert-base-uncased`` loads directly; ``crossattention`` starts from random weights.
Attention runs through SDPA; a :class:`KVCache` makes generation cost one step per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class TextConfig:
    """Shape of the BERT masked-LM and the special token ids of its vocabulary."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    pad_token_id: int = 0
    unk_token_id: int = 100
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    random_token_start: int = 106
    """Masking's random replacements draw ids from here to the vocabulary end (bert-base: past the
    [PAD], [unused*], [UNK], [CLS], [SEP], [MASK] block)."""
    grad_checkpointing: bool = False

    def build(self) -> BertForMaskedLM:
        return BertForMaskedLM(self)


@dataclass
class KVCache:
    """Per-layer keys/values of committed tokens (self-attention) and of the cross-attention memory."""

    self_kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (B, H, P, d) each
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (B, H, M, d) each
    key_valid: torch.Tensor | None = None  # (B, P) bool: committed tokens that are not padding
    prefix_len: torch.Tensor | None = None  # (B,) tokens before this index attend bidirectionally

    @property
    def length(self) -> int:
        return 0 if self.key_valid is None else self.key_valid.shape[1]

    def reorder(self, index: torch.Tensor, cross: bool = True) -> KVCache:
        """Select batch rows (beam search bookkeeping); ``cross=False`` keeps the memory rows as they are."""
        pick = lambda kv: (kv[0].index_select(0, index), kv[1].index_select(0, index))
        return KVCache(
            [pick(kv) for kv in self.self_kv],
            [pick(kv) for kv in self.cross_kv] if cross else self.cross_kv,
            None if self.key_valid is None else self.key_valid.index_select(0, index),
            None if self.prefix_len is None else self.prefix_len.index_select(0, index),
        )


def attention_mask(
    key_valid: torch.Tensor, n_query: int, causal: bool, prefix_len: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Boolean SDPA mask (B, 1, Q, K) for the last ``n_query`` of K positions; None when all attend.

    Causal: query i sees keys <= i, plus every key before ``prefix_len`` (a bidirectional prefix,
    used by QA for the question). Padding keys (``key_valid`` False) are never seen.
    """
    B, K = key_valid.shape
    if not causal and bool(key_valid.all()):
        return None
    mask = key_valid[:, None, None, :].expand(B, 1, n_query, K)
    if causal:
        q_pos = torch.arange(K - n_query, K, device=key_valid.device)[:, None]
        k_pos = torch.arange(K, device=key_valid.device)[None, :]
        visible = k_pos <= q_pos  # (Q, K)
        if prefix_len is not None:
            visible = visible | (k_pos[None] < prefix_len[:, None, None])  # (B, Q, K)
        mask = mask & visible.reshape(-1 if visible.dim() == 3 else 1, 1, n_query, K)
    return mask


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        # saved in the official checkpoints, so kept persistent
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=True)

    def forward(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        L = input_ids.shape[1]
        pos = self.position_ids[:, start : start + L]
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(pos)
            + self.token_type_embeddings.weight[0]
        )
        return self.dropout(self.LayerNorm(x))  # (B, L, C)


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout = cfg.dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        return x.view(B, L, self.heads, C // self.heads).transpose(1, 2)  # (B, H, L, d)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.key(x)), self.split(self.value(x))

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        B, L, C = x.shape
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(self.split(self.query(x)), k, v, attn_mask=mask, dropout_p=p)
        return y.transpose(1, 2).reshape(B, L, C)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: TextConfig, inner: int | None = None):
        super().__init__()
        self.dense = nn.Linear(inner or cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(y)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.self = BertSelfAttention(cfg)
        self.output = BertSelfOutput(cfg)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Self-attention, then cross-attention to the memory (when one is given), then the MLP."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.crossattention = BertAttention(cfg)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(
        self,
        x: torch.Tensor,  # (B, L, C)
        self_mask: torch.Tensor | None,
        memory: torch.Tensor | None = None,  # (B, M, C) cross-attention keys
        memory_mask: torch.Tensor | None = None,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        sa = self.attention.self
        k, v = sa.kv(x)
        new_kv = (k, v)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)
        x = self.attention.output(sa(x, k, v, self_mask), x)
        if cross_kv is None and memory is not None:
            cross_kv = self.crossattention.self.kv(memory)
        if cross_kv is not None:
            x = self.crossattention.output(self.crossattention.self(x, *cross_kv, memory_mask), x)
        return self.output(self.intermediate(x), x), new_kv


class BertModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, cfg: TextConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = BertPredictionHeadTransform(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight  # tied: both names appear in the state dict
        self.decoder.bias = self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertForMaskedLM(nn.Module):
    """The text tower: ``encode`` gives hidden states, ``logits`` the masked-LM predictions."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.bert = BertModel(cfg)
        self.cls = nn.Module()
        self.cls.predictions = BertLMPredictionHead(cfg, self.bert.embeddings.word_embeddings)
        self.grad_checkpointing = cfg.grad_checkpointing
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT init: normal(0, 0.02) weights, zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            self.bert.embeddings.word_embeddings.weight[self.cfg.pad_token_id].zero_()

    def encode(
        self,
        input_ids: torch.Tensor,  # (B, L)
        valid: torch.Tensor | None = None,  # (B, L) bool, False on padding
        memory: torch.Tensor | None = None,  # (B, M, C)
        memory_valid: torch.Tensor | None = None,  # (B, M) bool
        causal: bool = False,
        prefix_len: torch.Tensor | None = None,  # (B,)
        cache: KVCache | None = None,
        commit: int = 0,
    ) -> torch.Tensor:
        """Hidden states (B, L, C) of ``input_ids``.

        With a ``cache``, ``input_ids`` continue the cached tokens (causal decoding); the keys and
        values of the first ``commit`` new tokens are appended to the cache, the rest (e.g. the
        trailing [MASK] whose prediction is wanted) are computed but forgotten.
        """
        if valid is None:
            valid = torch.ones_like(input_ids, dtype=torch.bool)
        start = 0
        if cache is not None:
            start = cache.length
            if cache.key_valid is not None:
                valid = torch.cat([cache.key_valid, valid], dim=1)
            if prefix_len is None:
                prefix_len = cache.prefix_len
        self_mask = attention_mask(valid, input_ids.shape[1], causal or cache is not None, prefix_len)
        memory_mask = None
        if memory_valid is not None and not bool(memory_valid.all()):
            memory_mask = memory_valid[:, None, None, :]
        if cache is not None and memory is not None and not cache.cross_kv:
            cache.cross_kv = [layer.crossattention.self.kv(memory) for layer in self.bert.encoder.layer]

        x = self.bert.embeddings(input_ids, start)
        new_kv = []
        for i, layer in enumerate(self.bert.encoder.layer):
            past = cache.self_kv[i] if cache is not None and cache.self_kv else None
            cross = cache.cross_kv[i] if cache is not None and cache.cross_kv else None
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(layer, x, self_mask, memory, memory_mask, past, cross, use_reentrant=False)
            else:
                x, kv = layer(x, self_mask, memory, memory_mask, past, cross)
            new_kv.append(kv)

        if cache is not None and commit > 0:
            keep = lambda t: t[:, :, :commit]
            if cache.self_kv:
                cache.self_kv = [
                    (torch.cat([pk, keep(k)], 2), torch.cat([pv, keep(v)], 2))
                    for (pk, pv), (k, v) in zip(cache.self_kv, new_kv, strict=True)
                ]
            else:
                cache.self_kv = [(keep(k), keep(v)) for k, v in new_kv]
            cache.key_valid = valid[:, : start + commit]
            cache.prefix_len = prefix_len
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits (..., vocab) of hidden states (..., C)."""
        return self.cls.predictions(hidden)


def load_tokenizer(path: str | Path) -> Any:
    """A ``BertTokenizer`` from a local directory (with ``vocab.txt``) or a ``vocab.txt`` file.

    (In transformers 5.x ``BertTokenizerFast(vocab_file=...)`` silently ignores the file, so the
    slow tokenizer is used.)
    """
    from transformers import BertTokenizer

    path = Path(path)
    vocab = path / "vocab.txt" if path.is_dir() else path
    if not vocab.exists():
        raise FileNotFoundError(f"no WordPiece vocabulary at {vocab}")
    return BertTokenizer(str(vocab), do_lower_case=True)


def tokenize(tokenizer: Any, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (B, L) and validity mask (B, L) of ``[CLS] text [SEP]``, truncated to ``max_len``."""
    enc = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].bool()
