"""Synthetic data for the model tests: a handful of distinct clips with texts, and the tiny model."""

from __future__ import annotations

import torch

from vast.model import VAST, create_model

CAPTIONS = [
    "a red dog runs on the grass",
    "a blue car drives down the road",
    "a woman sings a song on stage",
    "two kids play with a yellow ball",
]
SUBTITLES = ["look at him go", "we are almost home", "thank you all for coming", "catch it now"]
QUESTIONS = ["what color is the dog", "what is driving", "who sings", "how many kids"]
ANSWERS = ["red", "car", "woman", "two"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, as the tiny config expects


def tiny_model(tokenizer, **overrides) -> VAST:
    """The tiny config with the test vocabulary attached."""
    text = {"vocab_size": len(tokenizer), **overrides.pop("text", {})}
    model = create_model("tiny", text=text, **overrides)
    model.set_tokenizer(tokenizer)
    return model


def make_batch(n: int = 4, frames: int = 2, clips: int = 1, size: int = 32, audio_frames: int = 128) -> dict:
    """``n`` synthetic samples with distinct frames, fbank slices, subtitles and captions."""
    g = torch.Generator().manual_seed(1234)
    return {
        "frames": torch.randn(n, frames, 3, size, size, generator=g),
        "audio": torch.randn(n, clips, audio_frames, 64, generator=g),
        "subtitle": SUBTITLES[:n],
        "text": CAPTIONS[:n],
        "question": QUESTIONS[:n],
        "answer": ANSWERS[:n],
    }
