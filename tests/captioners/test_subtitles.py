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
    split_window,
    window_verdict,
)
from vast.pipeline.stage import batch_of, rows_of

BACKENDS = ("openai", "faster")
GATES_OFF = {"no_speech_threshold": None, "logprob_threshold": None, "compression_ratio_threshold": None,
             "silence_db": None}


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
def test_whispers_rule_skips_only_unsure_no_speech_windows(stages, media, backend):
    tone = [{"flac": media["tone"]}]
    ungated = stages[backend].annotate(tone)[0]
    assert ungated["subtitle"]  # the random model invents text on a pure tone...
    seg = json.loads(ungated["subtitle_segments"])[0]
    nsp, logprob = seg["no_speech_prob"], seg["avg_logprob"]
    empty = {"subtitle": "", "subtitle_segments": "[]", "subtitle_language": ""}

    def run(**gates):
        out = _with(stages[backend], **gates).annotate(tone)[0]
        return {k: out[k] for k in empty}, out["empty_reason"]

    # no-speech probability above the threshold AND log-prob below it: skipped, with the reason
    skipped, reason = run(no_speech_threshold=nsp / 2, logprob_threshold=logprob + 0.5)
    assert skipped == empty and reason.startswith("Whisper kept no text: no speech")
    # a confident decode is kept whatever its no-speech probability (Whisper's rule, not either gate)
    kept, _ = run(no_speech_threshold=nsp / 2, logprob_threshold=logprob - 0.5)
    assert kept["subtitle"] == ungated["subtitle"]
    # a low log-prob alone skips nothing; the no-speech probability alone does when logprob is unset
    assert run(logprob_threshold=logprob + 0.5)[0]["subtitle"] == ungated["subtitle"]
    assert run(no_speech_threshold=nsp / 2)[0] == empty
    assert run(no_speech_threshold=min(0.999, nsp * 2))[0]["subtitle"] == ungated["subtitle"]
    # the repetition rule is separate
    ratio = seg["compression_ratio"]
    assert run(compression_ratio_threshold=ratio / 2)[1].startswith("Whisper kept no text: repetition")
    assert run(compression_ratio_threshold=ratio * 2)[0]["subtitle"] == ungated["subtitle"]
    # silence is not decoded at all: a 440 Hz sine peaks near 0 dBFS
    assert run(silence_db=-60.0)[0]["subtitle"] == ungated["subtitle"]
    assert run(silence_db=10.0)[1].startswith("silent audio")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stage_call_no_audio_bad_audio_and_provenance(models, stages, media, backend):
    stage = stages[backend]
    rows = [{"key": k, "status": "ok", "error_class": "", "message": "", "stage": "", "flac": f} for k, f in
            [("a", media["speech"]), ("b", b""), ("c", b"not a flac file")]]
    out = rows_of(stage(batch_of(rows)))
    assert [r["status"] for r in out] == ["ok", "ok", "failed"]
    assert out[0]["subtitle"]
    assert (out[1]["subtitle"], out[1]["subtitle_segments"], out[1]["subtitle_language"]) == ("", "[]", "")
    assert json.loads(out[1]["provenance"])["subtitle"]["empty_reason"] == "no audio track"
    assert json.loads(out[0]["provenance"])["subtitle"]["empty_reason"] == ""
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


def test_split_window_follows_transcribe():
    tb = 1000
    # two closed segments, then a single timestamp: the whole window (1200 frames) is consumed
    segs, advance = split_window([tb + 0, 1, 2, tb + 50, tb + 50, 3, tb + 100], tb, 1200)
    assert segs == [(0.0, 1.0, [tb, 1, 2, tb + 50]), (1.0, 2.0, [tb + 50, 3, tb + 100])]
    assert advance == 1200
    # an unfinished segment after the last pair: resume at the last pair's end (2 frames per token)
    segs, advance = split_window([tb + 0, 1, tb + 50, tb + 50, 3], tb, 3000)
    assert [(s, e) for s, e, _ in segs] == [(0.0, 1.0)] and advance == 100
    # no pair: one segment up to the last timestamp, or the window's end
    assert split_window([tb + 10, 5, 6, tb + 40], tb, 800) == ([(0.0, 0.8, [tb + 10, 5, 6, tb + 40])], 800)
    assert split_window([5, 6], tb, 450) == ([(0.0, 4.5, [5, 6])], 450)


def test_window_verdict_and_compression_ratio():
    cfg = WhisperConfig()
    assert compression_ratio("la " * 100) > cfg.compression_ratio_threshold
    assert compression_ratio("A short and varied sentence.") < cfg.compression_ratio_threshold
    assert window_verdict(Window([], "en", 0.1, -0.3, compression_ratio=1.2), cfg) is None
    assert window_verdict(Window([], "en", 0.9, -1.5, compression_ratio=1.2), cfg) == "no_speech"
    assert window_verdict(Window([], "en", 0.9, -0.3, compression_ratio=1.2), cfg) is None  # confident
    assert window_verdict(Window([], "en", 0.1, -1.5, compression_ratio=1.2), cfg) is None  # speech, unsure
    assert window_verdict(Window([], "en", 0.1, -0.3, compression_ratio=3.0), cfg) == "repetition"


def test_tiny_whisper_is_deterministic(models, tmp_path):
    from vast.captioners.tiny_lm import write_tiny_whisper

    assert write_tiny_whisper(tmp_path).read_bytes() == models["openai"].read_bytes()
