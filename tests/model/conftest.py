"""Fixtures for the model tests: a WordPiece vocabulary trained offline, the tiny model, a batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.model.synthetic import ANSWERS, CAPTIONS, QUESTIONS, SPECIALS, SUBTITLES, make_batch, tiny_model
from vast.model import VAST, load_tokenizer

torch.set_num_threads(1)  # the CI machine has 2 shared cores
torch.set_flush_denormal(True)  # denormals slow tiny-model training on CPU by 5x


@pytest.fixture(scope="session")
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WordPiece vocabulary (vocab.txt) trained on the synthetic texts."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False)
    corpus = CAPTIONS + SUBTITLES + QUESTIONS + ANSWERS + ["the quick brown fox jumps over the lazy dog"] * 3
    tok.train_from_iterator(corpus, trainer)
    out = tmp_path_factory.mktemp("vocab")
    tok.model.save(str(out))
    return out


@pytest.fixture(scope="session")
def tokenizer(vocab_dir: Path):
    return load_tokenizer(vocab_dir)


@pytest.fixture
def model(tokenizer) -> VAST:
    torch.manual_seed(0)
    return tiny_model(tokenizer)


@pytest.fixture
def batch() -> dict:
    return make_batch()
