from pathlib import Path

import pytest
import torch

from vast.model import load_bert
from vast.model.checkpoint import CheckpointMismatch
from vast.model.text import KVCache, TextConfig, tokenize

REF = Path(__file__).resolve().parents[1] / "data" / "checkpoints"  # upstream layouts (names, shapes)
SMALL = TextConfig(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    dropout=0.0,
)


def _rows(name: str) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in (REF / name).read_text().splitlines()[1:]]


def test_state_dict_matches_the_official_bert_layout():
    with torch.device("meta"):
        bert = TextConfig().build()
    ours = {k: list(v.shape) for k, v in bert.state_dict().items()}
    ref = {r[0]: eval(r[1]) for r in _rows("bert_multimodal.tsv")}
    assert ours == ref
    from_base = {r[0] for r in _rows("bert_multimodal.tsv") if r[3] == "yes"}
    assert {k for k in ours if ".crossattention." not in k} - {"bert.embeddings.position_ids"} == from_base


def test_decoder_is_tied_to_word_embeddings():
    bert = SMALL.build()
    p = bert.cls.predictions
    assert p.decoder.weight is bert.bert.embeddings.word_embeddings.weight
    assert p.decoder.bias is p.bias


def _hf_model(tmp_path: Path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    hf = BertForMaskedLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    return hf


def test_loads_hugging_face_bert_and_matches_its_logits(tmp_path):
    hf = _hf_model(tmp_path)
    ours = SMALL.build().eval()
    report = load_bert(ours, tmp_path)
    assert not report.missing and not report.unexpected
    assert report.fresh and all(
        ".crossattention." in k or "decoder" in k or "position_ids" in k for k in report.fresh
    )
    ids = torch.randint(5, 120, (3, 11))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, 7:] = False
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=valid.long()).logits
        got = ours.logits(ours.encode(ids, valid))
    assert torch.allclose(got[valid], want[valid], atol=1e-4)


def test_load_bert_refuses_a_wrong_vocabulary(tmp_path):
    _hf_model(tmp_path)
    other = TextConfig(**{**SMALL.__dict__, "vocab_size": 121}).build()
    with pytest.raises(CheckpointMismatch, match="word_embeddings"):
        load_bert(other, tmp_path)


def test_causal_mask_hides_later_tokens_and_cross_attention_is_used():
    torch.manual_seed(0)
    bert = SMALL.build().eval()
    ids = torch.randint(5, 120, (2, 9))
    memory = torch.randn(2, 5, 32)
    h = bert.encode(ids, memory=memory, causal=True)
    ids2 = ids.clone()
    ids2[:, 6:] = 7
    h2 = bert.encode(ids2, memory=memory, causal=True)
    assert torch.allclose(h[:, :6], h2[:, :6], atol=1e-5)
    assert not torch.allclose(h[:, 6:], h2[:, 6:], atol=1e-3)
    assert not torch.allclose(h, bert.encode(ids, memory=memory + 1, causal=True), atol=1e-3)
    # a bidirectional prefix: tokens before prefix_len see each other, later ones stay causal
    prefix = torch.tensor([4, 4])
    hp = bert.encode(ids, memory=memory, causal=True, prefix_len=prefix)
    hp2 = bert.encode(ids2, memory=memory, causal=True, prefix_len=prefix)
    assert torch.allclose(hp[:, :6], hp2[:, :6], atol=1e-5)
    assert not torch.allclose(hp[:, :4], h[:, :4], atol=1e-3)


def test_kv_cache_decoding_equals_full_recompute():
    torch.manual_seed(0)
    bert = SMALL.build().eval()
    ids = torch.randint(5, 120, (2, 8))
    memory = torch.randn(2, 5, 32)
    memory_valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    full = bert.encode(ids, memory=memory, memory_valid=memory_valid, causal=True)
    cache = KVCache()
    h = bert.encode(ids[:, :3], memory=memory, memory_valid=memory_valid, cache=cache, commit=3)
    steps = [h]
    for i in range(3, 8):
        steps.append(bert.encode(ids[:, i : i + 1], memory_valid=memory_valid, cache=cache, commit=1))
    assert cache.length == 8
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_tokenize_adds_cls_sep_and_truncates(tokenizer):
    ids, valid = tokenize(tokenizer, ["a red dog runs on the grass", "dog"], max_len=5)
    assert ids.shape == (2, 5)
    assert ids[0, 0] == tokenizer.cls_token_id and ids[0, -1] == tokenizer.sep_token_id
    assert valid[1].tolist() == [True, True, True, False, False]  # [CLS] dog [SEP] [PAD] [PAD]
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == "a red dog"
