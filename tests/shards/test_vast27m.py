"""VAST-27M annotations both ways: every released record form in, the release's records out."""

from __future__ import annotations

import csv
import json

import pytest

from vast.cli import main
from vast.pipeline.inputs import read_inputs
from vast.shards.vast27m import clock

YT = "https://www.youtube.com/watch?v={}"
CAPS = {"vision_cap": ["a dog runs"], "audio_cap": ["barking"], "subtitle": "go fetch",
        "vast_cap": "A dog runs."}


def read(tmp_path, records, name="vast27m.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    reqs = read_inputs([path])
    return path, reqs.table().to_pylist(), reqs.rejected_table().to_pylist()


def test_every_released_form_lands_on_its_named_span_with_its_captions(tmp_path):
    path, rows, rejected = read(tmp_path, [
        # the public re-upload: id, url, begin_s/end_s and begin_t/end_t
        {"id": "UmWkmGAu5Hc.14", "url": YT.format("UmWkmGAu5Hc"), "begin_s": 428.199, "end_s": 439.36,
         "begin_t": "00:07:08.199", "end_t": "00:07:19.360", **CAPS},
        # derivative copies: clip_id + clip_span, the video named by the id alone
        {"clip_id": "UmWkmGAu5Hc.15", "clip_span": ["00:07:20.000", "00:07:30.500"], **CAPS},
        # clock times only
        {"id": "dQw4w9WgXcQ.2", "begin_t": "00:00:05.000", "end_t": "00:00:09.250", "vast_cap": "x"},
        # an HD-VILA video record: its clips in a list, spans as span_start/span_end or span
        {"video_id": "aqz-KE-bpKQ", "url": YT.format("aqz-KE-bpKQ"),
         "clip": [{"clip_id": "aqz-KE-bpKQ.1", "span": ["00:00:01.500", "00:00:06"]},
                  {"clip_id": "aqz-KE-bpKQ.2", "span_start": "00:00:06", "span_end": "00:00:12.000"}]},
    ])
    assert rejected == []
    got = {r["input"].rsplit(":", 1)[1]: r for r in rows}
    assert {k: (r["key"], r["source"], r["start"], r["end"]) for k, r in got.items()} == {
        "[0]": ("UmWkmGAu5Hc_428199_439360", YT.format("UmWkmGAu5Hc"), 428.199, 439.36),
        "[1]": ("UmWkmGAu5Hc_440000_450500", YT.format("UmWkmGAu5Hc"), 440.0, 450.5),
        "[2]": ("dQw4w9WgXcQ_5000_9250", YT.format("dQw4w9WgXcQ"), 5.0, 9.25),
        "[3].clip[0]": ("aqz-KE-bpKQ_1500_6000", YT.format("aqz-KE-bpKQ"), 1.5, 6.0),
        "[3].clip[1]": ("aqz-KE-bpKQ_6000_12000", YT.format("aqz-KE-bpKQ"), 6.0, 12.0),
    }
    for k in ("[0]", "[1]"):
        assert {n: got[k][n] for n in CAPS} == CAPS
    assert json.loads(got["[1]"]["meta"]) == {"clip_id": "UmWkmGAu5Hc.15"}  # the export gives it back
    assert json.loads(got["[0]"]["provenance"])["vast_cap"] == {"imported_from": f"{path}:[0]"}


@pytest.mark.parametrize("record, message", [
    ({"clip_id": "UmWkmGAu5Hc.14", "clip_span": ["00:07:08.199", "00:07:99.000"], **CAPS}, "bad clock time"),
    ({"clip_id": "UmWkmGAu5Hc.14", "clip_span": ["00:07:08.199"], **CAPS}, "clip_span must be [START, END]"),
    ({"clip_id": "UmWkmGAu5Hc.14", "clip_span": "from 7 to 8 minutes", **CAPS}, "clip_span must be"),
    ({"id": "UmWkmGAu5Hc.14", "begin_s": 1.0, "end_s": 6.0, "begin_t": "00:00:02.000",
      "end_t": "00:00:06.000", **CAPS}, "conflicting spans"),
    ({"id": "UmWkmGAu5Hc.14", "begin_s": 8.0, "end_s": 6.0, **CAPS}, "must be after START"),
    ({"id": "UmWkmGAu5Hc.14", "begin_s": 8.0, **CAPS}, "START and END must be given together"),
    ({"id": "clip-7", "url": YT.format("UmWkmGAu5Hc"), **CAPS}, "captions (vision_cap, audio_cap, subtitle, "
                                                                 "vast_cap) without a span"),
    ({"clip_id": "UmWkmGAu5Hc.14"}, "names one clip of UmWkmGAu5Hc, but the record has no span"),
    ({"clip_id": "UmWkmGAu5Hc.14", "url": YT.format("dQw4w9WgXcQ"), "clip_span": [1, 2]},
     "names video UmWkmGAu5Hc"),
    ({"id": "UmWkmGAu5Hc.14", "begin_s": 1, "end_s": 2, "vision_cap": [1, 2]}, "vision_cap must be a list"),
])
def test_a_record_that_could_put_captions_on_the_wrong_clip_is_invalid_input(tmp_path, record, message):
    path, rows, rejected = read(tmp_path, [{"url": YT.format("dQw4w9WgXcQ"), "start": 0, "end": 5}, record])
    assert len(rows) == 1  # the good record is kept; nothing is planned for the bad one
    (bad,) = rejected
    assert (bad["input"], bad["status"], bad["error_class"]) == (f"{path}:[1]", "failed", "invalid_input")
    assert message in bad["message"] and repr(record.get("clip_id", record.get("id"))) in bad["message"]


def test_csv_and_jsonl_copies_and_a_dict_keyed_by_clip_id(tmp_path):
    with open(tmp_path / "clips.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["clip_id", "clip_span", "vast_cap"])
        w.writeheader()
        w.writerow({"clip_id": "UmWkmGAu5Hc.14", "clip_span": '["00:07:08.199", "00:07:19.360"]',
                    "vast_cap": "x"})
    jsonl = json.dumps({"id": "UmWkmGAu5Hc.15", "begin_s": 1, "end_s": 2.5})
    (tmp_path / "clips.jsonl").write_text(jsonl + "\n")
    by_id = {"UmWkmGAu5Hc.16": {"clip_span": [3, 4], "vast_cap": "y"}}
    (tmp_path / "by_id.json").write_text(json.dumps(by_id))
    reqs = read_inputs([tmp_path / "clips.csv", tmp_path / "clips.jsonl", tmp_path / "by_id.json"])
    assert reqs.rejected_table().num_rows == 0
    assert reqs.table()["key"].to_pylist() == ["UmWkmGAu5Hc_428199_439360", "UmWkmGAu5Hc_1000_2500",
                                               "UmWkmGAu5Hc_3000_4000"]


@pytest.mark.slow
def test_imported_clips_carry_their_captions_and_export_gives_the_records_back(corpus, tmp_path):
    records = json.loads(corpus.inputs.read_text())
    rejected = [r for r in corpus.ledger if r["error_class"] == "invalid_input"]
    assert sorted(r["input"] for r in rejected) == [f"{corpus.inputs}:[4]", f"{corpus.inputs}:[5]"]
    assert "'UmWkmGAu5Hc.14'" in rejected[0]["message"] or "'UmWkmGAu5Hc.14'" in rejected[1]["message"]

    out_json = tmp_path / "export.json"
    assert main(["export", str(corpus.output), str(out_json), "--format", "vast27m"]) == 0
    exported = {r["id"]: r for r in json.loads(out_json.read_text())}
    for record in records[:4]:  # the good ones: each once, on its span, with its captions
        clip_id = record.get("clip_id", record.get("id"))
        r = exported[clip_id]
        assert r["url"] == record["url"]
        start = record.get("begin_s", 0.5 if clip_id == "silent.2" else 1.0)
        assert r["begin_s"] == pytest.approx(start) and r["begin_t"] == clock(r["begin_s"])
        for name in ("vision_cap", "audio_cap", "subtitle", "vast_cap"):
            expected = record.get(name, [] if name.endswith("_cap") else "")
            assert r[name] == expected, (clip_id, name)
    assert exported["speech.3"]["end_t"] == "00:00:06.500" and exported["silent.2"]["end_s"] == 5.25
    # the export reads back in as the same clips
    again = read_inputs([out_json]).table().to_pylist()
    assert sorted(r["key"] for r in again) == sorted(corpus.ok_keys)


def test_clock_format():
    assert clock(3723.5) == "01:02:03.500" and clock(0.0004) == "00:00:00.000"
