"""``WhisperSubtitler``: the speech subtitle of each clip, with segment timestamps and language.

Each clip's 16 kHz audio is cut into consecutive 30 s windows (VAST-27M clips are 5–30 s, so
usually one), and the windows of the whole batch are decoded together: log-mel features stacked,
one encoder pass, batched language detection, then batched timestamped decoding (openai-whisper's
``DecodingTask`` per detected language, with its beam-search batch bug worked around; or
CTranslate2's ``Whisper.generate`` under faster-whisper). Decoding is deterministic (temperature
0, greedy or beam search, no temperature fallback), so a clip gets the same subtitle whatever
batch it lands in. Unlike ``whisper.transcribe``, windows are fixed 30 s spans (no seeking to
the last timestamp), which is what makes them batchable.

Whisper invents text on music and silence. Every decoded window carries Whisper's own
confidence figures, and its segments are dropped when any gate fails:

- ``no_speech_prob > no_speech_threshold`` (the model's probability that the window holds no speech),
- ``avg_logprob < logprob_threshold`` (mean token log-probability: low means guessing),
- ``compression_ratio > compression_ratio_threshold`` (gzip ratio of the text: high means loops).

So music-only or silent clips get an empty subtitle instead of invented text. A clip without
audio gets ``""`` too; that is not a failure.
"""

from __future__ import annotations

import importlib.metadata
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vast.captioners.base import ModelStage, ModelStageConfig, decode_audio, pick_device, weights_checksum
from vast.pipeline.stage import SampleError

SAMPLE_RATE = 16000
WINDOW_S = 30.0  # Whisper's fixed input span
TIME_PRECISION = 0.02  # seconds per timestamp token


@dataclass
class WhisperConfig(ModelStageConfig):
    """Settings of the Whisper subtitle stage."""

    backend: str = "openai"
    """``openai`` (openai-whisper, PyTorch) or ``faster`` (faster-whisper, CTranslate2)."""
    model: str = "large-v3"
    """A model name (``large-v3``, ``small`` …; downloaded, needs internet) or a local path: an
    openai-whisper checkpoint file ``{dims, model_state_dict}`` for ``openai``, a CTranslate2 model
    directory for ``faster``."""
    language: str | None = None
    """Spoken language code (``en``, ``de`` …); ``None`` detects it per clip."""
    beam_size: int = 5
    """Beam width; 1 decodes greedily."""
    max_tokens: int | None = None
    """Most tokens decoded per 30 s window; ``None``: the model's limit (224)."""
    no_speech_threshold: float | None = 0.6
    """Drop a window's segments when its no-speech probability is above this; ``None`` disables the gate."""
    logprob_threshold: float | None = -1.0
    """Drop a window's segments when their mean token log-probability is below this; ``None`` disables."""
    compression_ratio_threshold: float | None = 2.4
    """Drop a window's segments when the gzip compression ratio of their text is above this (repetition
    loops); ``None`` disables."""
    max_windows: int = 64
    """Most 30 s windows decoded in one model call; a batch with long clips is decoded in several calls."""


@dataclass
class Window:
    """One decoded 30 s window: generated token ids and the model's confidence figures."""

    tokens: list[int]
    language: str
    no_speech_prob: float
    avg_logprob: float
    segments: list[dict[str, Any]] = field(default_factory=list)
    compression_ratio: float = 0.0


def compression_ratio(text: str) -> float:
    """Bytes over gzip'd bytes of ``text`` (Whisper's repetition measure); 0 for empty text."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def passes_gates(window: Window, config: WhisperConfig) -> bool:
    """Whether a decoded window's segments are kept (see the module docstring)."""
    if config.no_speech_threshold is not None and window.no_speech_prob > config.no_speech_threshold:
        return False
    if config.logprob_threshold is not None and window.avg_logprob < config.logprob_threshold:
        return False
    if config.compression_ratio_threshold is not None and \
            window.compression_ratio > config.compression_ratio_threshold:
        return False
    return True


def split_segments(tokens: list[int], timestamp_begin: int, eot: int, decode: Any,
                   duration: float) -> list[tuple[float, float, str]]:
    """Timestamped tokens of one window → ``(start, end, text)`` segments (seconds within the window).

    Text runs between timestamp tokens; a run without a closing timestamp ends at ``duration``.
    Special tokens other than timestamps are dropped from the text.
    """
    segments: list[tuple[float, float, str]] = []
    start: float | None = None
    text: list[int] = []
    for t in tokens:
        if t >= timestamp_begin:
            stamp = min((t - timestamp_begin) * TIME_PRECISION, duration)
            if text:
                segments.append((start if start is not None else 0.0, stamp, decode(text)))
                text = []
            start = stamp  # a closing timestamp also opens the next segment unless another one follows
        elif t < eot:
            text.append(t)
    if text:
        begin = start if start is not None else 0.0
        segments.append((begin, max(begin, duration), decode(text)))
    return [(round(s, 2), round(e, 2), txt) for s, e, txt in segments if txt.strip()]


class _OpenAIBackend:
    """openai-whisper: batched log-mel, encoder and language detection, then batched decoding."""

    def __init__(self, config: WhisperConfig):
        try:
            import torch
            import whisper
        except ImportError as e:
            raise ImportError("Whisper backend 'openai' needs openai-whisper: "
                              "pip install openai-whisper==20250625") from e
        self.config = config
        device, dtype = pick_device(config)
        self.device = device
        self.fp16 = device.type == "cuda" and dtype != torch.float32  # whisper decodes in fp16 or fp32 only
        self.model = whisper.load_model(config.model, device=device)
        if self.fp16:
            self.model = self.model.half()
        self.weights_path = config.model if Path(config.model).exists() else _openai_cache_path(config.model)
        self.tokenizer = whisper.tokenizer.get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, task="transcribe")
        self.timestamp_begin = self.tokenizer.timestamp_begin
        self.eot = self.tokenizer.eot

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def decode(self, audios: list[np.ndarray]) -> list[Window]:
        import torch
        import whisper

        c, model = self.config, self.model
        # one window at a time: log_mel_spectrogram normalises by the max of its whole input
        n_mels = model.dims.n_mels
        mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(a)), n_mels)
                            for a in audios]).to(self.device)  # (B, n_mels, 3000)
        results: list[Any] = [None] * len(audios)
        with torch.inference_mode():
            features = model.encoder(mels.half() if self.fp16 else mels)  # (B, n_audio_ctx, n_audio_state)
            if c.language or not model.is_multilingual:
                languages = [c.language or "en"] * len(audios)
            else:
                _, probs = whisper.decoding.detect_language(model, features, self.tokenizer)
                languages = [max(p, key=p.get) for p in probs]
            for language in dict.fromkeys(languages):  # the language token is part of the prompt
                idx = [i for i, lang in enumerate(languages) if lang == language]
                options = whisper.DecodingOptions(
                    task="transcribe", language=language, temperature=0.0, sample_len=c.max_tokens,
                    beam_size=c.beam_size if c.beam_size > 1 else None, without_timestamps=False,
                    fp16=self.fp16)
                for i, r in zip(idx, _BatchedBeamTask(model, options).run(features[idx]), strict=True):
                    results[i] = r
        return [Window(list(r.tokens), r.language, float(r.no_speech_prob), float(r.avg_logprob))
                for r in results]


def _batched_beam_task() -> type:
    import whisper.decoding

    class BatchedBeamTask(whisper.decoding.DecodingTask):
        """openai-whisper 20250625 expands the tokens per beam but not the audio features, so beam search
        on more than one window fails (openai/whisper PR #2197, unmerged): expand them here. The language
        is always given (detected beforehand), so the task never detects it on the expanded features."""

        def _get_audio_features(self, mel: Any) -> Any:
            features = super()._get_audio_features(mel)
            return features.repeat_interleave(self.n_group, dim=0) if self.n_group > 1 else features

        def _detect_language(self, audio_features: Any, tokens: Any) -> tuple[list[str], None]:
            return [self.options.language] * tokens.shape[0], None  # one per window, not per beam

    return BatchedBeamTask


def _BatchedBeamTask(model: Any, options: Any) -> Any:  # noqa: N802 - builds the task class lazily
    global _BATCHED_BEAM_TASK
    if _BATCHED_BEAM_TASK is None:
        _BATCHED_BEAM_TASK = _batched_beam_task()
    return _BATCHED_BEAM_TASK(model, options)


_BATCHED_BEAM_TASK: type | None = None


def _openai_cache_path(name: str) -> str | None:
    import os

    import whisper

    url = whisper._MODELS.get(name)
    if url is None:
        return None
    root = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "whisper")
    path = os.path.join(root, os.path.basename(url))
    return path if os.path.exists(path) else None


class _FasterBackend:
    """faster-whisper: batched features → CTranslate2 ``Whisper.detect_language`` and ``generate``."""

    def __init__(self, config: WhisperConfig):
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.utils import download_model
        except ImportError as e:
            raise ImportError("backend 'faster' needs faster-whisper: pip install faster-whisper") from e
        import torch

        self.config = config
        device, dtype = pick_device(config)
        compute_type = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype, "float32")
        path = config.model if Path(config.model).is_dir() else download_model(config.model)
        self.weights_path = path
        self.model = WhisperModel(path, device=device.type, device_index=device.index or 0,
                                  compute_type=compute_type)
        multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe",
                                   language=config.language or "en")  # prompts are built per window
        self.timestamp_begin = self.tokenizer.timestamp_begin
        self.eot = self.tokenizer.eot

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def decode(self, audios: list[np.ndarray]) -> list[Window]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import get_suppressed_tokens

        c, tok = self.config, self.tokenizer
        frames = self.model.feature_extractor.nb_max_frames
        # (B, n_mels, 3000), one window at a time (the extractor normalises by its input's max)
        feats = np.stack([pad_or_trim(self.model.feature_extractor(a), frames) for a in audios])
        encoded = self.model.encode(feats.astype(np.float32))
        multilingual = self.model.model.is_multilingual
        if not multilingual:
            languages = ["en"] * len(audios)
        elif c.language:
            languages = [c.language] * len(audios)
        else:
            languages = [probs[0][0][2:-2] for probs in self.model.model.detect_language(encoded)]
        prompts = [[tok.sot, tok.tokenizer.token_to_id(f"<|{lang}|>"), tok.transcribe] if multilingual
                   else [tok.sot] for lang in languages]
        max_new = c.max_tokens if c.max_tokens is not None else self.model.max_length // 2
        max_length = min(self.model.max_length, len(prompts[0]) + max_new)  # prompt + generated ≤ 448
        results = self.model.model.generate(
            encoded, prompts, beam_size=c.beam_size, max_length=max_length,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok, [-1])), sampling_temperature=0.0)
        windows = []
        for lang, r in zip(languages, results, strict=True):
            ids = r.sequences_ids[0]
            # scores are length-normalised: back to a sum, then Whisper's mean over tokens + EOT
            avg_logprob = r.scores[0] * len(ids) / (len(ids) + 1)
            windows.append(Window(list(ids), lang, float(r.no_speech_prob), float(avg_logprob)))
        return windows


BACKENDS = {"openai": _OpenAIBackend, "faster": _FasterBackend}


class WhisperSubtitler(ModelStage):
    """Whisper ASR of each clip's FLAC → ``subtitle``, ``subtitle_segments`` (JSON), ``subtitle_language``."""

    name: ClassVar[str] = "subtitle"
    Config: ClassVar[type] = WhisperConfig
    fields: ClassVar[tuple[str, ...]] = ("subtitle", "subtitle_segments", "subtitle_language")

    def __init__(self, config: WhisperConfig | None = None):
        super().__init__(config)
        if self.config.backend not in BACKENDS:
            raise ValueError(f"unknown Whisper backend {self.config.backend!r}; "
                             f"use one of {', '.join(BACKENDS)}")
        self.backend = BACKENDS[self.config.backend](self.config)
        path = self.backend.weights_path
        self._checksum = weights_checksum(str(path)) if path else None
        package = {"openai": "openai-whisper", "faster": "faster-whisper"}[self.config.backend]
        self._library = f"{package} {importlib.metadata.version(package)}"

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | SampleError]:
        results: list[dict[str, Any] | SampleError] = []
        spans: list[tuple[int, float, float]] = []  # (row index, window offset s, window length s)
        audios: list[np.ndarray] = []
        window = int(WINDOW_S * SAMPLE_RATE)
        for i, row in enumerate(rows):
            try:
                audio = decode_audio(row.get("flac") or b"", SAMPLE_RATE)
            except SampleError as e:
                results.append(e)
                continue
            results.append(_subtitle([], ""))
            for start in range(0, len(audio), window):
                chunk = audio[start:start + window]
                spans.append((i, start / SAMPLE_RATE, len(chunk) / SAMPLE_RATE))
                audios.append(chunk)
        if not audios:
            return results
        step = max(1, self.config.max_windows)
        decoded = [w for k in range(0, len(audios), step) for w in self.backend.decode(audios[k:k + step])]
        per_row: dict[int, list[tuple[float, Window]]] = {}
        for (i, offset, length), win in zip(spans, decoded, strict=True):
            segs = split_segments(win.tokens, self.backend.timestamp_begin, self.backend.eot,
                                  self.backend.text, length)
            win.compression_ratio = compression_ratio(" ".join(t.strip() for _, _, t in segs))
            win.segments = [{"start": round(offset + s, 2), "end": round(offset + e, 2), "text": t.strip()}
                            for s, e, t in segs]
            per_row.setdefault(i, []).append((offset, win))
        for i, windows in per_row.items():
            kept = [{**seg, "no_speech_prob": _sig(w.no_speech_prob), "avg_logprob": _sig(w.avg_logprob),
                     "compression_ratio": _sig(w.compression_ratio)}
                    for _, w in windows if passes_gates(w, self.config) for seg in w.segments]
            results[i] = _subtitle(kept, windows[0][1].language if kept else "")
        return results

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {"model": c.model, "backend": c.backend, "library": self._library,
                "weights_sha256": self._checksum,
                "decoding": {"temperature": 0.0, "beam_size": c.beam_size, "max_tokens": c.max_tokens,
                             "language": c.language},
                "gates": {"no_speech_threshold": c.no_speech_threshold,
                          "logprob_threshold": c.logprob_threshold,
                          "compression_ratio_threshold": c.compression_ratio_threshold}}


def _sig(x: float) -> float:
    return float(f"{x:.4g}")  # 4 significant digits: batch composition moves the 7th


def _subtitle(segments: list[dict[str, Any]], language: str) -> dict[str, Any]:
    return {"subtitle": " ".join(s["text"] for s in segments),
            "subtitle_segments": json.dumps(segments, ensure_ascii=False),
            "subtitle_language": language}
