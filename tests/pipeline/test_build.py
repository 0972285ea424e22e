"""``shards build``: upstream annotation JSON + media folder -> shards of the ingest schema."""

from __future__ import annotations

import json

import webdataset as wds

from tests.train.shardgen import downstream_shards, media_dir, shard_urls
from vast.pipeline.build import build_inputs, merge_records, read_annotations, shards_build


def test_records_of_one_video_merge_into_one_sample():
    videos = merge_records([
        {"video_id": "v1", "desc": "a cat"}, {"video_id": "v1", "caption": ["a cat sits", "a kitten"]},
        {"video_id": "v2", "question": "what animal", "answer": ["dog"]},
        {"video_id": "v2", "question": "how many", "answer": "two", "split": "test"},
    ])
    assert videos["v1"]["desc"] == ["a cat", "a cat sits", "a kitten"]
    assert videos["v2"]["qa"] == [{"question": "what animal", "answer": "dog"},
                                  {"question": "how many", "answer": "two"}]
    assert (videos["v2"]["question"], videos["v2"]["answer"]) == ("what animal", "dog")
    assert videos["v2"]["split"] == "test"


def test_annotation_files_as_list_mapping_or_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"v1": ["x", "y"]}))
    (tmp_path / "b.jsonl").write_text('{"video_id": "v1", "desc": "x"}\n{"video_id": "v2", "desc": "y"}\n')
    assert read_annotations(tmp_path / "a.json") == [{"video_id": "v1", "desc": ["x", "y"]}]
    assert [r["video_id"] for r in read_annotations(tmp_path / "b.jsonl")] == ["v1", "v2"]


def test_inputs_are_one_whole_file_span_per_video_and_missing_media_is_named(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video_id": "red", "desc": "r"}, {"video_id": "nowhere", "desc": "n"}]))
    n, missing = build_inputs(ann, media_dir(), tmp_path / "in.jsonl")
    assert (n, missing) == (1, ["nowhere"])
    row = json.loads((tmp_path / "in.jsonl").read_text())
    assert row["url"].endswith("red.mp4") and row["start"] == 0.0 and abs(row["end"] - 2.0) < 0.1
    assert row["video_id"] == "red" and row["desc"] == ["r"]


def test_missing_media_makes_the_build_fail(tmp_path, capsys):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps([{"video_id": "nowhere", "desc": "n"}]))
    assert shards_build(str(ann), str(media_dir()), str(tmp_path / "out"), preset="tiny") == 1
    assert "nowhere" in capsys.readouterr().err


def test_built_shards_have_the_ingest_schema_with_annotations_in_the_json():
    samples = list(wds.WebDataset(shard_urls(downstream_shards()), shardshuffle=False))
    assert len(samples) == 4
    by_id = {json.loads(s["json"])["video_id"]: s for s in samples}
    red = json.loads(by_id["red"]["json"])
    assert red["key"] == "red_0_2000" and red["has_audio"] and "flac" in by_id["red"]
    assert red["meta"]["desc"] == ["a red screen hums low", "red light and a low hum"]
    assert red["meta"]["question"] == "what color is it" and red["meta"]["answer"] == "red"
    assert by_id["red"]["mp4"][4:8] == b"ftyp"
    grid = json.loads(by_id["grid"]["json"])
    assert not grid["has_audio"] and grid["audio_missing"]  # its flac member is silence
    assert len(list(downstream_shards().glob("shard-*.parquet"))) == 2  # manifests beside the tars
