"""MediaCutter on generated media: real ffmpeg, ffprobe and decord, outputs checked with ffprobe."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.mediagen import make_audio_only, make_corrupt, make_video
from vast.pipeline.keys import clip_key
from vast.pipeline.media import MediaConfig, MediaCutter
from vast.pipeline.stage import LEDGER_COLUMNS, SampleError, batch_of, rows_of

# Small outputs keep the encodes cheap; the code path is the production one.
CFG = MediaConfig(max_height=120, fps=10, gop_s=0.5, num_frames=4, frame_size=64,
                  min_clip_s=5.0, max_clip_s=12.0)


def request(path: Path | None, video_id: str, start: float = math.nan, end: float = math.nan,
            *, media: bytes | None = None, offset: float = 0.0, skip: list[str] | None = None) -> dict:
    """A row as the fetch stage hands it over: every ledger column plus media/media_offset/source_info."""
    row = {
        "request": clip_key(video_id, start, end) if not math.isnan(start) else video_id,
        "input": "ids.txt:1", "video_id": video_id, "source": str(path), "start": start, "end": end,
        "meta": "{}", "skip_keys": skip or [], "n_clips": 1, "status": "ok", "error_class": "",
        "message": "", "stage": "",
    }
    row["key"] = row["request"]
    assert set(row) == set(LEDGER_COLUMNS)
    row["media"] = media if media is not None else path.read_bytes()
    row["media_offset"] = offset
    row["source_info"] = json.dumps({"duration": 8.0})
    return row


def run(rows: list[dict], config: MediaConfig = CFG) -> list[dict]:
    return rows_of(MediaCutter(config)(batch_of(rows)))


def probe(data: bytes, tmp: Path, name: str, *entries: str) -> dict:
    path = tmp / name
    path.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                          *entries, str(path)], capture_output=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    return {
        # 426 wide: 426·120/240 = 213 → scale=-2 must round to an even 214
        "tone": make_video(d / "tone.mp4", seconds=8, audio="tone", size="426x240", fps=25),
        "silent": make_video(d / "silent.mp4", seconds=4, audio=None, size="160x120"),
        "scenes": make_video(d / "scenes.mp4", seconds=18, audio="tone", size="160x120", scene_every=3),
        "short": make_video(d / "short.mp4", seconds=3, audio="tone", size="160x120"),
        "corrupt": make_corrupt(d / "corrupt.mp4"),
        "audio_only": make_audio_only(d / "audio.m4a"),
    }


@pytest.fixture(scope="module")
def scene_rows(media) -> list[dict]:
    return run([request(media["scenes"], "vidS")])


def test_span_clip_outputs(media, tmp_path):
    (row,) = run([request(media["tone"], "vidA", 1.0, 5.0)])
    assert row["status"] == "ok", row["message"]
    assert (row["key"], row["start"], row["end"], row["n_clips"]) == ("vidA_1000_5000", 1.0, 5.0, 1)
    assert "media" not in row and "media_offset" not in row

    v = probe(row["mp4"], tmp_path, "clip.mp4")
    (vs,) = v["streams"]  # video only: the audio travels as flac
    assert vs["codec_name"] == "h264" and vs["pix_fmt"] == "yuv420p"
    assert abs(float(v["format"]["duration"]) - 4.0) < 0.15
    assert (vs["width"], vs["height"]) == (214, 120)
    assert vs["avg_frame_rate"] == "10/1"
    # faststart: the moov box precedes the media data
    assert row["mp4"].find(b"moov") < row["mp4"].find(b"mdat")

    packets = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                              "packet=pts_time,flags", "-of", "csv=p=0", str(tmp_path / "clip.mp4")],
                             capture_output=True, text=True, check=True).stdout.split()
    keys = sorted(float(p.split(",")[0]) for p in packets if "K" in p.split(",")[1])
    assert keys[0] < 0.05
    assert max(np.diff(keys + [4.0])) <= CFG.gop_s + 1e-3, keys

    a = probe(row["flac"], tmp_path, "clip.flac")
    (as_,) = a["streams"]
    assert (as_["codec_name"], as_["sample_rate"], as_["channels"]) == ("flac", "16000", 1)
    assert abs(float(a["format"]["duration"]) - 4.0) < 0.05

    frames = row["frames"]
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # real pictures, not a blank default

    info = json.loads(row["clip_info"])
    assert (info["width"], info["height"]) == (vs["width"], vs["height"])
    assert info["has_audio"] is True and info["audio_missing"] is None
    assert abs(info["duration"] - 4.0) < 0.15 and info["fps"] == 10
    assert len(info["frame_times"]) == 4 and info["frame_times"] == sorted(info["frame_times"])
    assert 0 < info["frame_times"][0] < 1.0 < 3.0 < info["frame_times"][-1] < 4.0
    assert info["source"]["width"] == 426 and info["source"]["audio_codec"] == "aac"


def test_section_download_offsets(media, tmp_path):
    # the fetcher downloaded only the section starting at source time 100 s
    (row,) = run([request(media["tone"], "vidA", 101.0, 104.0, offset=100.0)])
    assert row["status"] == "ok", row["message"]
    assert (row["key"], row["start"], row["end"]) == ("vidA_101000_104000", 101.0, 104.0)
    info = json.loads(row["clip_info"])
    assert info["source"]["clip_start_in_media"] == 1.0
    assert abs(float(probe(row["flac"], tmp_path, "c.flac")["format"]["duration"]) - 3.0) < 0.05


def test_span_outside_media_is_invalid(media):
    (row,) = run([request(media["tone"], "vidA", 20.0, 25.0)])
    assert (row["status"], row["error_class"], row["stage"]) == ("failed", "invalid_input", "media")
    assert row["message"] == "span 20-25 s starts after the end of the source (the source ends at 8 s)"


def frames_and_samples(row: dict, tmp: Path) -> tuple[int, int]:
    """Frames of the clip's mp4 and samples of its flac, as ffprobe counts them."""
    (vs,) = probe(row["mp4"], tmp, "c.mp4", "-count_frames")["streams"]
    (fs,) = probe(row["flac"], tmp, "c.flac")["streams"]
    return int(vs["nb_read_frames"]), int(fs["duration_ts"])


def test_a_span_partly_past_the_end_is_refused_not_cut_short(media):
    """The key would name 6 s of which the source holds 2: refused, whatever the transport (a section
    download that ends early reads the same, see test_bad_inputs)."""
    (row,) = run([request(media["tone"], "vidA", 6.0, 12.0)])
    assert (row["status"], row["error_class"], row["stage"]) == ("failed", "invalid_input", "media")
    assert row["key"] == "vidA_6000_12000" and row["mp4"] == b"" and row["flac"] == b""
    assert row["message"] == ("span 6-12 s runs 4.000 s past the end of the source (the source ends at 8 s; "
                              "end_slack_s=0.1)")
    # from a section download that starts at 5 s of the source, the message says so
    (section,) = run([request(media["tone"], "vidA", 11.0, 17.0, offset=5.0)])
    assert section["error_class"] == "invalid_input" and "section downloaded from 5 s ends at 13" in \
        section["message"]


def test_a_span_ending_within_the_slack_is_padded_to_its_keyed_length(media, tmp_path):
    """Containers round durations: a span 60 ms past the end is cut, and lasts what its key names."""
    (row,) = run([request(media["tone"], "vidA", 5.0, 8.06)])
    assert row["status"] == "ok", row["message"]
    assert (row["key"], row["start"], row["end"]) == ("vidA_5000_8060", 5.0, 8.06)
    assert json.loads(row["clip_info"])["duration"] == 3.06
    # the media contract: round(duration × fps) frames (CFG.fps = 10), round(duration × 16000) samples
    assert frames_and_samples(row, tmp_path) == (round(3.06 * 10), round(3.06 * 16000))
    (strict,) = run([request(media["tone"], "vidA", 5.0, 8.06)], dataclasses.replace(CFG, end_slack_s=0.0))
    assert strict["error_class"] == "invalid_input" and "end_slack_s=0" in strict["message"]


def test_a_span_may_run_to_the_end_of_audio_that_outlasts_the_pictures(tmp_path):
    """The media ends where its last track does: the last picture is held over audio that goes on."""
    src = tmp_path / "long-audio.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=25:d=4",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=5", "-c:v", "libx264",
                    "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(src)],
                   check=True, capture_output=True)
    ok, past = run([request(src, "vidL", 3.0, 5.0), request(src, "vidL", 3.0, 5.5)])
    assert ok["status"] == "ok", ok["message"]
    assert frames_and_samples(ok, tmp_path) == (20, 32000)
    assert past["error_class"] == "invalid_input" and "past the end" in past["message"]


def test_a_file_without_video_or_audio_is_a_decode_error(tmp_path):
    """ffprobe reads subtitles (or some random bytes, as text) as a stream: still not a media file."""
    subs = tmp_path / "subs.mp4"
    subs.write_text("1\n00:00:01,000 --> 00:00:02,000\nhello\n\n2\n00:00:03,000 --> 00:00:04,000\nworld\n")
    for config in (CFG, dataclasses.replace(CFG, audio_only=True)):
        (row,) = run([request(subs, "vidS")], config)
        assert (row["error_class"], row["stage"]) == ("decode_error", "media")
        assert row["message"] == "no video or audio stream: read as srt with streams: subtitle"


def test_rotated_source_keeps_its_displayed_shape(media, tmp_path):
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(media["silent"]), "-c", "copy",
                    "-metadata:s:v", "rotate=90", str(rotated)], check=True, capture_output=True)
    (row,) = run([request(rotated, "vidR", 0.0, 2.0)])
    assert row["status"] == "ok", row["message"]
    (vs,) = probe(row["mp4"], tmp_path, "clip.mp4")["streams"]
    info = json.loads(row["clip_info"])
    assert (info["width"], info["height"]) == (vs["width"], vs["height"]) == (90, 120)  # 120x160 shown


def test_no_audio_track_is_not_a_failure(media):
    (row,) = run([request(media["silent"], "vidN", 0.0, 3.0)])
    assert row["status"] == "ok", row["message"]
    assert row["flac"] == b"" and len(row["mp4"]) > 0
    info = json.loads(row["clip_info"])
    assert info["has_audio"] is False and info["audio_missing"] == "no audio stream"


@pytest.mark.parametrize("name, media_bytes, error_class", [
    ("corrupt", None, "decode_error"),
    ("audio_only", None, "no_video_stream"),
    ("tone", b"", "empty_media"),
])
def test_unusable_media_classified(media, name, media_bytes, error_class):
    (row,) = run([request(media[name], "vidX", media=media_bytes)])
    assert (row["status"], row["error_class"], row["stage"]) == ("failed", error_class, "media")
    assert row["message"]
    # failed rows carry the stage's columns with their defaults, so every batch has one schema
    assert row["mp4"] == b"" and row["frames"].shape == (0, 64, 64, 3) and row["clip_info"] == "{}"


def test_whole_video_cut_at_scenes(media, scene_rows):
    rows = scene_rows
    assert len(rows) >= 2 and all(r["status"] == "ok" for r in rows), [r["message"] for r in rows]
    assert all(r["n_clips"] == len(rows) and r["request"] == "vidS" for r in rows)
    assert rows[0]["start"] == 0.0 and abs(rows[-1]["end"] - 18.0) < 0.1
    for r, nxt in zip(rows, rows[1:], strict=False):
        assert r["end"] == nxt["start"]
    for r in rows:
        assert CFG.min_clip_s <= r["end"] - r["start"] <= CFG.max_clip_s
        assert re.fullmatch(r"vidS_\d+_\d+", r["key"]) and r["key"] == clip_key("vidS", r["start"], r["end"])
        # inner boundaries sit on the 3 s scene changes
        assert min(abs(r["start"] - 3 * k) for k in range(7)) <= 0.25
        info = json.loads(r["clip_info"])
        assert abs(info["duration"] - (r["end"] - r["start"])) < 0.2 and info["has_audio"]
        assert r["frames"].shape == (4, 64, 64, 3)
    # the same video gives the same clips: resume relies on it
    assert [r["key"] for r in run([request(media["scenes"], "vidS")])] == [r["key"] for r in rows]


def test_skip_keys_are_not_cut_but_still_accounted(media, scene_rows):
    keys = [r["key"] for r in scene_rows]
    rows = run([request(media["scenes"], "vidS", skip=keys[:-1])])
    expected = [(k, "duplicate") for k in keys[:-1]] + [(keys[-1], "ok")]
    assert [(r["key"], r["status"]) for r in rows] == expected
    assert all(r["n_clips"] == len(keys) for r in rows)
    assert all(r["mp4"] == b"" for r in rows[:-1]) and rows[-1]["mp4"]
    every = run([request(media["scenes"], "vidS", skip=keys)])
    assert [r["status"] for r in every] == ["duplicate"] * len(keys)


def test_short_whole_video_stays_one_clip(media):
    (row,) = run([request(media["short"], "vidT")])
    assert row["status"] == "ok", row["message"]
    assert row["start"] == 0.0 and abs(row["end"] - 3.0) < 0.1 and row["n_clips"] == 1
    assert row["key"] == clip_key("vidT", 0.0, row["end"])


def test_failed_input_row_passes_through(media):
    failed = {**request(None, "vidF", 0.0, 4.0, media=b""), "status": "failed", "error_class": "private",
              "message": "Private video", "stage": "fetch"}
    rows = run([failed, request(media["silent"], "vidN", 0.0, 2.0)])
    assert len(rows) == 2
    assert {k: rows[0][k] for k in LEDGER_COLUMNS} == {k: failed[k] for k in LEDGER_COLUMNS}
    assert "media" not in rows[0] and rows[0]["mp4"] == b""
    assert rows[1]["status"] == "ok"


def test_one_failing_clip_fails_only_its_row(media, scene_rows):
    class FailSecondClip(MediaCutter):
        def _cut(self, src, tmp, start, end, probe, offset):
            if start > 0 and not hasattr(self, "failed_once"):
                self.failed_once = True
                raise SampleError("decode_error", "ffmpeg: simulated failure on this clip")
            return super()._cut(src, tmp, start, end, probe, offset)

    rows = rows_of(FailSecondClip(CFG)(batch_of([request(media["scenes"], "vidS")])))
    assert [r["key"] for r in rows] == [r["key"] for r in scene_rows]
    assert [r["status"] for r in rows] == ["ok", "failed"] + ["ok"] * (len(rows) - 2)
    assert rows[1]["error_class"] == "decode_error" and "simulated" in rows[1]["message"]
    assert rows[1]["mp4"] == b""


def test_config_rejects_unsplittable_bounds():
    with pytest.raises(ValueError, match="twice"):
        MediaCutter(MediaConfig(min_clip_s=10, max_clip_s=15))


def test_labelling_modes_whole_video_audio_only_and_still_image(tmp_path):
    """``split_scenes=False`` keeps a video whole; audio files and images become clips too."""
    video = make_video(tmp_path / "scenes.mp4", seconds=12.0, audio="tone", scene_every=3.0)
    audio = make_audio_only(tmp_path / "a.m4a", seconds=4.0)
    image = tmp_path / "still.png"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=320x240", "-frames:v", "1",
                    str(image)], check=True)
    stage = MediaCutter(MediaConfig(split_scenes=False, audio_only=True, num_frames=4, frame_size=32,
                                    max_height=120, preset="ultrafast"))
    rows = [{"request": p.stem, "key": p.stem, "input": f"x:{i}", "video_id": p.stem, "source": str(p),
             "start": math.nan, "end": math.nan, "meta": "{}", "skip_keys": [], "n_clips": 1, "status": "ok",
             "error_class": "", "message": "", "stage": "", "media": p.read_bytes(), "media_offset": 0.0,
             "source_info": "{}"} for i, p in enumerate([video, audio, image])]
    out = {r["video_id"]: r for r in rows_of(stage(batch_of(rows)))}
    assert [r["status"] for r in out.values()] == ["ok"] * 3
    assert out["scenes"]["key"] == "scenes_0_12000" and out["scenes"]["n_clips"] == 1
    assert out["a"]["mp4"] == b"" and out["a"]["flac"][:4] == b"fLaC" and len(out["a"]["frames"]) == 0
    assert json.loads(out["a"]["clip_info"])["duration"] == pytest.approx(4.0, abs=0.1)
    assert out["still"]["key"] == "still_0_1000" and out["still"]["frames"].shape == (4, 32, 32, 3)
    assert out["still"]["flac"] == b"" and out["still"]["mp4"][4:8] == b"ftyp"


def test_rows_of_one_file_share_one_probe_and_read_it_in_place(media, monkeypatch):
    """Spans fetched by one download: one ffprobe for all of them, the file read where it lies."""
    import vast.pipeline.media as media_module

    calls = []
    real = media_module.ffprobe
    monkeypatch.setattr(media_module, "ffprobe", lambda path, *a: calls.append(path) or real(path, *a))
    rows = []
    for start in (0.5, 3.0, 5.5):
        row = request(media["tone"], "vidA", start, start + 2.0)
        del row["media"]
        row["media_path"] = str(media["tone"])
        rows.append(row)
    out = run(rows)
    assert [r["status"] for r in out] == ["ok"] * 3, [r["message"] for r in out]
    assert calls == [media["tone"]]
    assert "media_path" not in out[0] and "probe" not in out[0]
    # a probe the fetch stage ran travels in the row: none at all here
    calls.clear()
    probed = json.loads(subprocess.run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format",
                                        "-show_streams", str(media["tone"])], capture_output=True,
                                       check=True).stdout)
    (again,) = run([{**rows[0], "probe": json.dumps(probed)}])
    assert again["status"] == "ok" and calls == [] and again["mp4"] == out[0]["mp4"]


def test_frames_only_when_asked(media, tmp_path):
    """Without frames the clip's duration and rate come from its mp4 header: as ffprobe reads them."""
    (row,) = run([request(media["tone"], "vidA", 1.0, 5.0)], dataclasses.replace(CFG, frames=False))
    assert row["status"] == "ok", row["message"]
    assert row["frames"].shape == (0, 64, 64, 3)
    info = json.loads(row["clip_info"])
    assert info["frame_times"] == []
    (vs,) = probe(row["mp4"], tmp_path, "c.mp4", "-count_frames")["streams"]
    num, den = map(int, vs["avg_frame_rate"].split("/"))
    assert info["fps"] == pytest.approx(num / den, abs=1e-3)
    assert info["duration"] == pytest.approx(int(vs["nb_read_frames"]) * den / num, abs=1e-3)
    # the same clip with frames: the same duration, which decord reads from the decoded stream
    (framed,) = run([request(media["tone"], "vidA", 1.0, 5.0)])
    assert json.loads(framed["clip_info"])["duration"] == info["duration"]
    assert framed["mp4"] == row["mp4"]
