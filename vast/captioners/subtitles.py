"""``WhisperSubtitler``: the speech subtitle of each clip, with segment timestamps and language.

Each backend reproduces its reference library's ``transcribe`` (openai-whisper's
``whisper.transcribe``, faster-whisper's ``WhisperModel.transcribe``) at temperature 0 with
``condition_on_previous_text=False``, and batches it across the clips of a batch:

- features are computed as the library computes them: the log-mel of the whole clip (openai:
  audio padded with 30 s of zeros; faster: with 160 samples), then each 30 s window is a slice
  of that mel padded *in mel space* to 3000 frames;
- decoding walks each clip the way ``transcribe`` does: decode the window at ``seek``, split the
  tokens at timestamp pairs into segments, then move ``seek`` to the end of the window (when the
  text ends with a single timestamp) or to the last complete segment's end (otherwise). Each
  round decodes the current window of every unfinished clip in one batch, so a clip's subtitle
  does not depend on the batch it lands in;
- the language is detected once per clip, on its first 30 s, exactly as the library does.

Which decoded text is kept follows Whisper's own rules, in both backends:

1. **no speech**: a window is skipped when ``no_speech_prob > no_speech_threshold`` AND
   ``avg_logprob < logprob_threshold`` (a confident decode is kept whatever the no-speech
   probability; with ``logprob_threshold`` unset, the no-speech probability alone decides);
2. **repetition**: a window whose text's gzip compression ratio is above
   ``compression_ratio_threshold`` is dropped. ``transcribe`` would re-decode it at a higher
   temperature and keep the retry; decoding here is deterministic (temperature 0 only), so the
   loop is dropped instead;
3. **no words**: a segment whose text has no letter or digit (``"..."``, ``" -"``) is empty;
4. **silence**: a clip whose loudest sample is below ``silence_db`` dBFS is not decoded at all
   (Whisper writes "You" or "Thank you." on digital silence with a confident log-prob).

Rules 1 and 3 apply inside the libraries too (a skipped window, a segment without text), so on
speech the subtitle equals the library's transcript; rules 2 and 4 are ours and documented
above, and so is one more: segment times are clamped to the clip's duration (a window's
timestamps can point past the end of the audio, which ``transcribe`` reports as they are).

A clip without audio, or whose every window was dropped, gets ``""``: the reason is
recorded in the field's provenance (``empty_reason``), it is not a failure.
"""

from __future__ import annotations

import importlib.metadata
import json
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vast.captioners.base import (
    EMPTY_REASON,
    ModelStage,
    ModelStageConfig,
    decode_audio,
    pick_device,
    weights_checksum,
)
from vast.pipeline.stage import SampleError

SAMPLE_RATE = 16000
N_FRAMES = 3000  # mel frames in Whisper's 30 s window
HOP_S = 0.01  # seconds per mel frame (hop 160 samples)
INPUT_STRIDE = 2  # mel frames per encoder position
TIME_PRECISION = 0.02  # seconds per timestamp token


@dataclass
class WhisperConfig(ModelStageConfig):
    """Settings of the Whisper subtitle stage."""

    backend: str = "openai"
    """``openai`` (openai-whisper, PyTorch) or ``faster`` (faster-whisper, CTranslate2)."""
    model: str = "large-v3"
    """``openai``: an openai-whisper name (``large-v3``, ``small`` …; whisper downloads it) or a
    checkpoint file ``{dims, model_state_dict}``. ``faster``: a hub id (``Systran/faster-whisper-large-v3``,
    fetched by ``vast-pipeline models pull``) or a CTranslate2 model directory."""
    language: str | None = None
    """Spoken language code (``en``, ``de`` …); ``None`` detects it per clip (English-only models: ``en``)."""
    beam_size: int = 5
    """Beam width; 1 decodes greedily."""
    max_tokens: int | None = None
    """Most tokens decoded per 30 s window; ``None``: the library's limit (openai 224, faster 448 with
    the prompt)."""
    no_speech_threshold: float | None = 0.6
    """Skip a window whose no-speech probability is above this AND whose ``avg_logprob`` is below
    ``logprob_threshold`` (Whisper's rule); ``None`` disables the rule."""
    logprob_threshold: float | None = -1.0
    """See ``no_speech_threshold``: a window decoded with a mean token log-probability above this is
    kept whatever its no-speech probability."""
    compression_ratio_threshold: float | None = 2.4
    """Drop a window whose text's gzip compression ratio is above this (a repetition loop); ``None``
    disables."""
    silence_db: float | None = -60.0
    """A clip whose peak level is below this many dBFS is silence and is not decoded; ``None`` disables."""
    max_windows: int = 64
    """Most 30 s windows decoded in one model call; more are decoded in several calls."""


@dataclass
class Window:
    """One decoded 30 s window: generated token ids and the model's confidence figures."""

    tokens: list[int]
    language: str
    no_speech_prob: float
    avg_logprob: float
    compression_ratio: float = 0.0


def compression_ratio(text: str) -> float:
    """Bytes over gzip'd bytes of ``text`` (Whisper's repetition measure); 0 for empty text."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def window_verdict(window: Window, config: WhisperConfig) -> str | None:
    """Why a decoded window's text is dropped (``no_speech``, ``repetition``), or None when it is kept."""
    if config.no_speech_threshold is not None and window.no_speech_prob > config.no_speech_threshold:
        confident = config.logprob_threshold is not None and window.avg_logprob > config.logprob_threshold
        if not confident:
            return "no_speech"
    if config.compression_ratio_threshold is not None and \
            window.compression_ratio > config.compression_ratio_threshold:
        return "repetition"
    return None


def has_words(text: str) -> bool:
    """Whether ``text`` holds a letter or digit (punctuation-only text counts as empty)."""
    return any(ch.isalnum() for ch in text)


def split_window(tokens: list[int], timestamp_begin: int, size: int
                 ) -> tuple[list[tuple[float, float, list[int]]], int]:
    """A window's generated tokens → ``(start s, end s, tokens)`` segments within the window, and the
    mel frames to advance ``seek`` by: ``whisper.transcribe``'s rule, token for token.

    Segments run between consecutive timestamp pairs; when the text ends with a single timestamp
    the whole window is consumed, otherwise decoding resumes at the last complete segment's end.
    Without timestamp pairs the window is one segment, up to its last timestamp (or its end).
    """
    n = len(tokens)
    is_ts = [t >= timestamp_begin for t in tokens]
    single_ending = n >= 2 and not is_ts[-2] and is_ts[-1]
    consecutive = [i for i in range(1, n) if is_ts[i] and is_ts[i - 1]]
    if consecutive:
        slices = consecutive + ([n] if single_ending else [])
        segments, last = [], 0
        for current in slices:
            part = tokens[last:current]
            segments.append(((part[0] - timestamp_begin) * TIME_PRECISION,
                             (part[-1] - timestamp_begin) * TIME_PRECISION, part))
            last = current
        advance = size if single_ending else (tokens[last - 1] - timestamp_begin) * INPUT_STRIDE
        return segments, advance
    duration = size * HOP_S
    stamps = [t for t in tokens if t >= timestamp_begin]
    if stamps and stamps[-1] != timestamp_begin:
        duration = (stamps[-1] - timestamp_begin) * TIME_PRECISION
    return [(0.0, duration, tokens)], size


class _OpenAIBackend:
    """openai-whisper: ``whisper.transcribe``'s features and ``DecodingTask``, batched."""

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
        self.multilingual = self.model.is_multilingual
        self.tokenizer = whisper.tokenizer.get_tokenizer(
            self.multilingual, num_languages=self.model.num_languages, task="transcribe")
        self.timestamp_begin = self.tokenizer.timestamp_begin
        self.eot = self.tokenizer.eot

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode([t for t in tokens if t < self.eot])

    def features(self, audio: np.ndarray) -> tuple[Any, int]:
        """The clip's log-mel (n_mels, T) as ``transcribe`` computes it, and its content frames."""
        import torch
        import whisper

        mel = whisper.log_mel_spectrogram(torch.from_numpy(audio), self.model.dims.n_mels,
                                          padding=whisper.audio.N_SAMPLES)
        return mel, mel.shape[-1] - N_FRAMES

    def window(self, mel: Any, seek: int, size: int) -> Any:
        import whisper

        return whisper.pad_or_trim(mel[:, seek:seek + size], N_FRAMES)

    def detect_window(self, mel: Any, content: int) -> Any:
        import whisper

        return whisper.pad_or_trim(mel, N_FRAMES)  # transcribe detects on the padded mel's first 30 s

    def _encode(self, windows: list[Any]) -> Any:
        import torch

        mels = torch.stack(windows).to(self.device)  # (B, n_mels, 3000)
        return self.model.encoder(mels.half() if self.fp16 else mels)  # (B, n_audio_ctx, n_audio_state)

    def detect(self, windows: list[Any]) -> list[str]:
        import torch
        import whisper

        with torch.inference_mode():
            _, probs = whisper.decoding.detect_language(self.model, self._encode(windows), self.tokenizer)
        return [max(p, key=p.get) for p in probs]

    def decode(self, windows: list[Any], languages: list[str]) -> list[Window]:
        import torch
        import whisper

        c = self.config
        results: list[Any] = [None] * len(windows)
        with torch.inference_mode():
            features = self._encode(windows)
            for language in dict.fromkeys(languages):  # the language token is part of the prompt
                idx = [i for i, lang in enumerate(languages) if lang == language]
                options = whisper.DecodingOptions(
                    task="transcribe", language=language, temperature=0.0, sample_len=c.max_tokens,
                    beam_size=c.beam_size if c.beam_size > 1 else None, without_timestamps=False,
                    fp16=self.fp16)
                for i, r in zip(idx, _BatchedBeamTask(self.model, options).run(features[idx]), strict=True):
                    results[i] = r
        return [Window(list(r.tokens), lang, float(r.no_speech_prob), float(r.avg_logprob))
                for r, lang in zip(results, languages, strict=True)]


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
    """faster-whisper: ``WhisperModel.transcribe``'s features, then CTranslate2's batched ``generate``."""

    def __init__(self, config: WhisperConfig):
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
        except ImportError as e:
            raise ImportError("Whisper backend 'faster' needs faster-whisper: "
                              "pip install faster-whisper==1.2.1") from e
        import torch

        from vast.captioners.hub import resolve_model

        self.config = config
        device, dtype = pick_device(config)
        compute_type = {torch.float16: "float16", torch.bfloat16: "bfloat16"}.get(dtype, "float32")
        path = resolve_model(config.model)
        self.weights_path = path
        self.model = WhisperModel(str(path), device=device.type, device_index=device.index or 0,
                                  compute_type=compute_type)
        self.multilingual = self.model.model.is_multilingual
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.multilingual, task="transcribe",
                                   language=config.language or "en")  # prompts are built per window
        self.timestamp_begin = self.tokenizer.timestamp_begin
        self.eot = self.tokenizer.eot

    def text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)  # drops every special token, timestamps included

    def features(self, audio: np.ndarray) -> tuple[np.ndarray, int]:
        """The clip's log-mel (n_mels, T) as ``WhisperModel.transcribe`` computes it, and content frames."""
        mel = self.model.feature_extractor(audio)
        return mel, mel.shape[-1] - 1

    def window(self, mel: np.ndarray, seek: int, size: int) -> np.ndarray:
        from faster_whisper.audio import pad_or_trim

        return pad_or_trim(mel[:, seek:seek + size])

    def detect_window(self, mel: np.ndarray, content: int) -> np.ndarray:
        from faster_whisper.audio import pad_or_trim

        return pad_or_trim(mel[:, :N_FRAMES])  # WhisperModel.detect_language's first segment

    def detect(self, windows: list[np.ndarray]) -> list[str]:
        encoded = self.model.encode(np.stack(windows).astype(np.float32))
        return [probs[0][0][2:-2] for probs in self.model.model.detect_language(encoded)]

    def decode(self, windows: list[np.ndarray], languages: list[str]) -> list[Window]:
        from faster_whisper.transcribe import get_suppressed_tokens

        c, tok = self.config, self.tokenizer
        encoded = self.model.encode(np.stack(windows).astype(np.float32))  # (B, n_mels, 3000) in
        prompts = [[tok.sot, tok.tokenizer.token_to_id(f"<|{lang}|>"), tok.transcribe] if self.multilingual
                   else [tok.sot] for lang in languages]
        max_length = self.model.max_length if c.max_tokens is None else \
            min(self.model.max_length, len(prompts[0]) + c.max_tokens)  # prompt + generated ≤ 448
        results = self.model.model.generate(
            encoded, prompts, beam_size=c.beam_size, max_length=max_length,
            return_scores=True, return_no_speech_prob=True, suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tok, [-1])), max_initial_timestamp_index=50)
        windows_out = []
        for lang, r in zip(languages, results, strict=True):
            ids = r.sequences_ids[0]
            # scores are length-normalised: back to a sum, then Whisper's mean over tokens + EOT
            avg_logprob = r.scores[0] * len(ids) / (len(ids) + 1)
            windows_out.append(Window(list(ids), lang, float(r.no_speech_prob), float(avg_logprob)))
        return windows_out


BACKENDS = {"openai": _OpenAIBackend, "faster": _FasterBackend}


@dataclass
class _Clip:
    """One clip's walk through its windows."""

    row: int
    mel: Any
    content: int  # mel frames holding audio
    language: str = ""
    seek: int = 0
    segments: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)


class WhisperSubtitler(ModelStage):
    """Whisper ASR of each clip's FLAC → ``subtitle``, ``subtitle_segments`` (JSON), ``subtitle_language``."""

    name: ClassVar[str] = "subtitle"
    Config: ClassVar[type] = WhisperConfig
    fields: ClassVar[tuple[str, ...]] = ("subtitle", "subtitle_segments", "subtitle_language")
    empty: ClassVar[dict[str, Any]] = {"subtitle": "", "subtitle_segments": "[]", "subtitle_language": ""}
    needs: ClassVar[tuple[str, ...]] = ("audio",)
    inputs: ClassVar[tuple[str, ...]] = ("flac",)
    model_options: ClassVar[tuple[str, ...]] = ("model",)

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

    @classmethod
    def model_refs(cls, config: WhisperConfig) -> dict[str, str]:
        """The ``faster`` backend's model (hub id or directory), or the ``openai`` backend's checkpoint
        file; openai-whisper's own names (``large-v3``) are its to download."""
        local = config.backend == "openai" and ("/" in config.model or config.model.endswith(".pt"))
        return {"model": config.model} if config.backend == "faster" or local else {}

    def annotate(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | SampleError]:
        c, b = self.config, self.backend
        results: list[dict[str, Any] | SampleError] = []
        clips: list[_Clip] = []
        for i, row in enumerate(rows):
            try:
                audio = decode_audio(row.get("flac") or b"", SAMPLE_RATE)
            except SampleError as e:
                results.append(e)
                continue
            results.append({**self.empty, EMPTY_REASON: _silence_reason(audio, c.silence_db)})
            if not results[-1][EMPTY_REASON]:
                mel, content = b.features(audio)
                clips.append(_Clip(i, mel, content))
        self._languages(clips)
        while active := [clip for clip in clips if clip.seek < clip.content]:
            sizes = [min(N_FRAMES, clip.content - clip.seek) for clip in active]
            windows = [b.window(clip.mel, clip.seek, n) for clip, n in zip(active, sizes, strict=True)]
            step = max(1, c.max_windows)
            decoded = [w for k in range(0, len(windows), step)
                       for w in b.decode(windows[k:k + step], [clip.language for clip in active[k:k + step]])]
            for clip, size, win in zip(active, sizes, decoded, strict=True):
                self._take(clip, size, win)
        for clip in clips:
            results[clip.row] = self._result(clip)
        return results

    def _languages(self, clips: list[_Clip]) -> None:
        c, b = self.config, self.backend
        if not b.multilingual or c.language:
            for clip in clips:
                clip.language = c.language if b.multilingual else "en"
            return
        todo = [clip for clip in clips if clip.content > 0]
        windows = [b.detect_window(clip.mel, clip.content) for clip in todo]
        step = max(1, c.max_windows)
        found = [lang for k in range(0, len(windows), step) for lang in b.detect(windows[k:k + step])]
        for clip, language in zip(todo, found, strict=True):
            clip.language = language

    def _take(self, clip: _Clip, size: int, win: Window) -> None:
        """Apply ``transcribe``'s seek rule and the keep rules (module docstring) to one decoded window."""
        b = self.backend
        win.compression_ratio = compression_ratio(b.text(win.tokens).strip())
        offset, duration = clip.seek * HOP_S, clip.content * HOP_S
        verdict = window_verdict(win, self.config)
        if verdict == "no_speech":  # transcribe skips the whole window
            clip.seek += size
            clip.dropped[verdict] += 1
            return
        parts, advance = split_window(win.tokens, b.timestamp_begin, size)
        clip.seek += advance if advance > 0 else size  # a window that ends at 0.00 s must still advance
        if verdict:
            clip.dropped[verdict] += 1
            return
        figures = {"no_speech_prob": _sig(win.no_speech_prob), "avg_logprob": _sig(win.avg_logprob),
                   "compression_ratio": _sig(win.compression_ratio)}
        for start, end, tokens in parts:
            text = b.text(tokens).strip()
            if start == end or not text:  # transcribe clears these segments too
                continue
            if not has_words(text):
                clip.dropped["no_words"] += 1
                continue
            clip.segments.append({"start": round(min(offset + start, duration), 2),
                                  "end": round(min(offset + end, duration), 2), "text": text, **figures})

    def _result(self, clip: _Clip) -> dict[str, Any]:
        segs = clip.segments
        out = {"subtitle": " ".join(s["text"] for s in segs),
               "subtitle_segments": json.dumps(segs, ensure_ascii=False),
               "subtitle_language": clip.language if segs else "", EMPTY_REASON: ""}
        if not segs:
            c = self.config
            why = {"no_speech": f"no speech (no_speech_prob > {c.no_speech_threshold} and avg_logprob < "
                                f"{c.logprob_threshold})",
                   "repetition": f"repetition (compression ratio > {c.compression_ratio_threshold})",
                   "no_words": "punctuation only"}
            dropped = [f"{why[k]} in {n} window(s)" if k != "no_words" else f"{n} segment(s) {why[k]}"
                       for k, n in sorted(clip.dropped.items())]
            out[EMPTY_REASON] = "Whisper kept no text: " + ("; ".join(dropped) or "it decoded none")
        return out

    def provenance(self) -> dict[str, Any]:
        c = self.config
        return {"model": c.model, "backend": c.backend, "library": self._library,
                "weights_sha256": self._checksum,
                "decoding": {"temperature": 0.0, "beam_size": c.beam_size, "max_tokens": c.max_tokens,
                             "language": c.language, "condition_on_previous_text": False},
                "gates": {"no_speech_threshold": c.no_speech_threshold,
                          "logprob_threshold": c.logprob_threshold,
                          "compression_ratio_threshold": c.compression_ratio_threshold,
                          "silence_db": c.silence_db}}


def _silence_reason(audio: np.ndarray, silence_db: float | None) -> str:
    """Why a clip is not decoded at all ("" when it is)."""
    if len(audio) == 0:
        return "no audio"
    if silence_db is None:
        return ""
    peak = float(np.abs(audio).max())
    level = 20 * np.log10(peak) if peak > 0 else -np.inf
    return f"silent audio (peak {level:.1f} dBFS < {silence_db} dBFS)" if level < silence_db else ""


def _sig(x: float) -> float:
    return float(f"{x:.4g}")  # 4 significant digits: batch composition moves the 7th
