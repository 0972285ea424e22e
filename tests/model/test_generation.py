import itertools

import torch
import torch.nn.functional as F

from vast.model.generation import GenerationConfig, generate
from vast.model.text import TextConfig

CFG = TextConfig(
    vocab_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
    dropout=0.0,
    pad_token_id=0,
    unk_token_id=1,
    cls_token_id=2,
    sep_token_id=3,
    mask_token_id=4,
)


def _setup(batch: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    text = CFG.build().eval()
    with torch.no_grad():  # sharper distributions than the 0.02 init so decoding choices matter
        for p in text.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    memory = torch.randn(batch, 6, 32)
    memory_valid = torch.ones(batch, 6, dtype=torch.bool)
    memory_valid[-1, 4:] = False
    prefix = torch.full((batch, 1), CFG.cls_token_id)
    return text, memory, memory_valid, prefix, torch.ones_like(prefix, dtype=torch.bool)


@torch.no_grad()
def _logp(text, memory, memory_valid, seq: list[int]) -> torch.Tensor:
    """log p(next | CLS + seq) by a full forward with a trailing [MASK] (no cache)."""
    ids = torch.tensor([[CFG.cls_token_id, *seq, CFG.mask_token_id]])
    h = text.encode(ids, memory=memory, memory_valid=memory_valid, causal=True)
    return F.log_softmax(text.logits(h[:, -1]), -1)[0]


def test_cached_greedy_equals_naive_recompute_and_is_deterministic():
    text, memory, memory_valid, prefix, pv = _setup()
    cfg = GenerationConfig(strategy="greedy", max_len=6)
    out = generate(text, memory, memory_valid, prefix, pv, cfg)
    assert out == generate(text, memory, memory_valid, prefix, pv, cfg)
    for b in range(3):
        seq: list[int] = []
        for _ in range(6):
            tok = int(_logp(text, memory[b : b + 1], memory_valid[b : b + 1], seq).argmax())
            if tok == CFG.sep_token_id:
                break
            seq.append(tok)
        assert out[b] == [seq]


def test_batched_generation_equals_one_item_at_a_time():
    text, memory, memory_valid, prefix, pv = _setup()
    for cfg in (GenerationConfig(strategy="greedy", max_len=5), GenerationConfig(strategy="beam", max_len=5)):
        together = generate(text, memory, memory_valid, prefix, pv, cfg)
        alone = [
            generate(text, memory[b : b + 1], memory_valid[b : b + 1], prefix[:1], pv[:1], cfg)[0]
            for b in range(3)
        ]
        assert together == alone


def test_beam_search_with_a_wide_beam_finds_the_best_length_normalised_sequence():
    """With beams wider than the candidate set, beam search is exhaustive: compare to brute force.

    Scoring is Hugging Face's (upstream decoded with it): sum(log p) / (prefix + words) ** alpha,
    the final [SEP] not counted; a sequence cut at max_len counts all its words.
    """
    text, memory, memory_valid, prefix, pv = _setup(batch=1, seed=1)
    max_len, alpha, V, sep = 3, 0.6, CFG.vocab_size, CFG.sep_token_id
    memo: dict[tuple[int, ...], torch.Tensor] = {}

    def logp(prefix_tokens: tuple[int, ...]) -> torch.Tensor:
        if prefix_tokens not in memo:
            memo[prefix_tokens] = _logp(text, memory, memory_valid, list(prefix_tokens))
        return memo[prefix_tokens]

    best, best_score = None, float("-inf")
    for n in range(1, max_len + 1):
        for seq in itertools.product(range(V), repeat=n):
            if sep in seq[:-1] or (n < max_len and seq[-1] != sep):
                continue
            words = [t for t in seq if t != sep]
            score = sum(float(logp(seq[:i])[t]) for i, t in enumerate(seq)) / (1 + len(words)) ** alpha
            if score > best_score:
                best, best_score = words, score
    cfg = GenerationConfig(strategy="beam", beam_size=V**max_len, max_len=max_len, length_penalty=alpha)
    assert generate(text, memory, memory_valid, prefix, pv, cfg)[0] == [best]


def test_length_penalty_favours_longer_captions():
    text, memory, memory_valid, prefix, pv = _setup(seed=2)
    lengths = []
    for alpha in (-2.0, 0.0, 3.0):
        cfg = GenerationConfig(strategy="beam", beam_size=4, max_len=8, length_penalty=alpha)
        lengths.append(sum(len(s[0]) for s in generate(text, memory, memory_valid, prefix, pv, cfg)))
    assert lengths[0] <= lengths[1] <= lengths[2] and lengths[0] < lengths[2]


def test_top_k_sampling_returns_n_per_item_and_is_seeded():
    text, memory, memory_valid, prefix, pv = _setup()
    cfg = GenerationConfig(strategy="sample", top_k=5, num_return=4, max_len=6)
    a = generate(text, memory, memory_valid, prefix, pv, cfg, generator=torch.Generator().manual_seed(0))
    b = generate(text, memory, memory_valid, prefix, pv, cfg, generator=torch.Generator().manual_seed(0))
    assert a == b and len(a) == 3 and all(len(x) == 4 for x in a)
    assert len({tuple(s) for x in a for s in x}) > 1
    one = GenerationConfig(strategy="sample", top_k=1, num_return=2, max_len=6)
    greedy = generate(text, memory, memory_valid, prefix, pv, GenerationConfig(strategy="greedy", max_len=6))
    sampled = generate(
        text, memory, memory_valid, prefix, pv, one, generator=torch.Generator().manual_seed(5)
    )
    assert sampled == [g * 2 for g in greedy]
