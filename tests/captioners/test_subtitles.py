"""WhisperSubtitler on tiny random-weight Whisper models (both backends), through the real code path."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from vast.captioners.subtitles import (
    WhisperConfig,
    WhisperSubtitler,
    Window,
    compression_ratio,
    passes_gates,
    split_segments,
)
from vast.pipeline.stage import batch_of, rows_of

BACKENDS = ("openai", "faster")
GATES_OFF = {"no_speech_threshold": None, "logprob_threshold": None, "compression_ratio_threshold": None}


def _flac(args: list[str]) -> bytes:
    cmd = ["ffmpeg", "-v", "error", *args, "-ar", "16000", "-ac", "1", "-f", "flac", "pipe:1"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("asr_media")
    wav = d / "speech.wav"
    text = "Hello, this clip has speech for the subtitle test."
    subprocess.run(["espeak-ng", "-w", str(wav), text], check=True)
    return {
        "speech": _flac(["-i", str(wav)]),
        "tone": _flac(["-f", "lavfi", "-i", "sine=frequency=440:duration=5"]),
        # 40 s: two 30 s windows, decoded in the same batch as the other clips
        "long": _flac(["-f", "lavfi", "-i", "sine=frequency=300:duration=20", "-i", str(wav),
                       "-filter_complex", "[0][1]concat=n=2:v=0:a=1,apad=whole_dur=40"]),
        "none": b"",
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vast.captioners.tiny_lm import write_tiny_faster_whisper, write_tiny_whisper

    d = tmp_path_factory.mktemp("asr_models")
    return {"openai": write_tiny_whisper(d), "faster": write_tiny_faster_whisper(d)}


@pytest.fixture(scope="module")
def stages(models: dict[str, Path]) -> dict[str, WhisperSubtitler]:
    """One loaded stage per backend, gates off (tests copy it to change only the gates)."""
    return {b: WhisperSubtitler(WhisperConfig(backend=b, model=str(models[b]), beam_size=1, max_tokens=16,
                                              **GATES_OFF)) for b in BACKENDS}


def _with(stage: WhisperSubtitler, **options) -> WhisperSubtitler:
    """The same loaded model with other decoding options or gates."""
    other = copy.copy(stage)
    other.config = dataclasses.replace(stage.config, **options)
    other.backend = copy.copy(stage.backend)
    other.backend.config = other.config
    return other


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beam_size", [1, 3])  # openai-whisper's own decode fails on beam > 1 with a batch
def test_batched_equals_one_by_one(stages, media, backend, beam_size):
    stage = _with(stages[backend], beam_size=beam_size)
    rows = [{"flac": media[k]} for k in ("speech", "tone", "long", "none")]
    batched = stage.annotate(rows)
    single = [stage.annotate([r])[0] for r in rows]
    assert batched == single
    assert _with(stage, max_windows=1).annotate(rows) == batched  # one window per model call
    assert batched[0]["subtitle"] and batched[1]["subtitle"]  # not vacuous: the tiny model does emit text


@pytest.mark.parametrize("backend", BACKENDS)
def test_speech_clip_gives_timestamped_segments_and_language(models, stages, media, backend):
    import whisper.tokenizer

    stage = stages[backend]
    speech, long = stage.annotate([{"flac": media["speech"]}, {"flac": media["long"]}])
    segments = json.loads(speech["subtitle_segments"])
    assert segments
    for seg in segments:
        assert set(seg) == {"start", "end", "text", "no_speech_prob", "avg_logprob", "compression_ratio"}
        assert 0.0 <= seg["start"] <= seg["end"] <= 30.0
        assert seg["text"]
    assert speech["subtitle"] == " ".join(s["text"] for s in segments)
    assert speech["subtitle_language"] in whisper.tokenizer.LANGUAGES
    # the second 30 s window of the 40 s clip is decoded with its offset
    long_segments = json.loads(long["subtitle_segments"])
    assert max(s["end"] for s in long_segments) > 30.0
    assert max(s["end"] for s in long_segments) <= 40.0
    config = WhisperConfig(backend=backend, model=str(models[backend]), language="de", beam_size=1,
                           max_tokens=8, **GATES_OFF)
    forced = WhisperSubtitler(config).annotate([{"flac": media["speech"]}])[0]
    assert forced["subtitle_language"] == "de"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gate,figure,failing", [
    ("no_speech_threshold", "no_speech_prob", lambda x: x / 2),   # gate drops above the threshold
    ("logprob_threshold", "avg_logprob", lambda x: x + 0.5),      # gate drops below the threshold
    ("compression_ratio_threshold", "compression_ratio", lambda x: x / 2),
])
def test_gate_empties_tone_clip(stages, media, backend, gate, figure, failing):
    tone = [{"flac": media["tone"]}]
    ungated = stages[backend].annotate(tone)[0]
    assert ungated["subtitle"]  # the random model invents text on a pure tone...
    value = json.loads(ungated["subtitle_segments"])[0][figure]
    gated = _with(stages[backend], **{gate: failing(value)}).annotate(tone)[0]
    # ...and the gate drops it
    assert gated == {"subtitle": "", "subtitle_segments": "[]", "subtitle_language": ""}
    passing = value * 2 if gate != "logprob_threshold" else value - 0.5
    kept = _with(stages[backend], **{gate: passing}).annotate(tone)[0]
    assert kept["subtitle"] == ungated["subtitle"]


def test_default_gates_empty_a_random_models_guesses(stages, media):
    # the tiny model's tokens have mean log-prob far below -1: the default gates refuse them
    defaults = WhisperConfig()
    gates = {g: getattr(defaults, g) for g in GATES_OFF}
    out = _with(stages["openai"], **gates).annotate([{"flac": media["tone"]}, {"flac": media["speech"]}])
    assert [o["subtitle"] for o in out] == ["", ""]


@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_call_no_audio_bad_audio_and_provenance(models, stages, media, backend):
    stage = stages[backend]
    rows = [{"key": k, "status": "ok", "error_class": "", "message": "", "stage": "", "flac": f} for k, f in
            [("a", media["speech"]), ("b", b""), ("c", b"not a flac file")]]
    out = rows_of(stage(batch_of(rows)))
    assert [r["status"] for r in out] == ["ok", "ok", "failed"]
    assert out[0]["subtitle"]
    assert (out[1]["subtitle"], out[1]["subtitle_segments"], out[1]["subtitle_language"]) == ("", "[]", "")
    assert out[2]["error_class"] == "decode_error" and out[2]["stage"] == "subtitle"
    prov = json.loads(out[0]["provenance"])
    assert set(prov) == {"subtitle", "subtitle_segments", "subtitle_language"}
    record = prov["subtitle"]
    assert record["model"] == str(models[backend]) and record["backend"] == backend
    if backend == "openai":
        assert record["weights_sha256"] == hashlib.sha256(models[backend].read_bytes()).hexdigest()
    else:
        assert len(record["weights_sha256"]) == 64
    assert record["gates"] == GATES_OFF and record["decoding"]["beam_size"] == 1


def test_split_segments_pairs_timestamps():
    tb, eot = 1000, 900
    def decode(ids: list[int]) -> str:
        return " ".join(f"w{i}" for i in ids)

    tokens = [tb + 0, 1, 2, tb + 50, tb + 50, 3, 950, tb + 100, 4]  # 950: a special token, not text
    assert split_segments(tokens, tb, eot, decode, duration=3.0) == [
        (0.0, 1.0, "w1 w2"), (1.0, 2.0, "w3"), (2.0, 3.0, "w4")]
    assert split_segments([5, 6], tb, eot, decode, duration=4.5) == [(0.0, 4.5, "w5 w6")]


def test_gates_and_compression_ratio():
    cfg = WhisperConfig()
    assert compression_ratio("la " * 100) > cfg.compression_ratio_threshold
    assert compression_ratio("A short and varied sentence.") < cfg.compression_ratio_threshold
    speech = Window([], "en", no_speech_prob=0.1, avg_logprob=-0.3, compression_ratio=1.2)
    assert passes_gates(speech, cfg)
    assert not passes_gates(Window([], "en", 0.9, -0.3, compression_ratio=1.2), cfg)
    assert not passes_gates(Window([], "en", 0.1, -1.5, compression_ratio=1.2), cfg)
    assert not passes_gates(Window([], "en", 0.1, -0.3, compression_ratio=3.0), cfg)


def test_tiny_whisper_is_deterministic(models, tmp_path):
    from vast.captioners.tiny_lm import write_tiny_whisper

    assert write_tiny_whisper(tmp_path).read_bytes() == models["openai"].read_bytes()
