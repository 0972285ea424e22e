import json
import math
import os
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vast.pipeline.inputs import InputFileError, read_inputs, source_path
from vast.pipeline.keys import clip_key, parse_time, request_key, sanitize, video_id_for, youtube_id


def test_every_line_form(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a b.mp4").write_bytes(b"x")
    ids = tmp_path / "ids.txt"
    ids.write_text(
        "# a comment\n"
        "\n"
        "dQw4w9WgXcQ\n"
        "dQw4w9WgXcQ 10 20\n"
        "https://youtu.be/dQw4w9WgXcQ 00:00:30.500 00:01:00   # trailing comment\n"
        "http://127.0.0.1:8000/clip.mp4 1:00 1:30.25\n"
        "media/a b.mp4 0 5\n"
        f"file://{tmp_path}/media/a%20b.mp4\n"
    )
    reqs = read_inputs([ids])
    rows = reqs.table().to_pylist()
    assert reqs.rejected_table().num_rows == 0
    assert [r["request"] for r in rows[:4]] == [
        "dQw4w9WgXcQ", "dQw4w9WgXcQ_10000_20000", "dQw4w9WgXcQ_30500_60000",
        rows[3]["video_id"] + "_60000_90250"]
    assert rows[0]["source"] == "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    assert math.isnan(rows[0]["start"]) and rows[1]["start"] == 10.0 and rows[2]["end"] == 60.0
    assert rows[4]["source"] == str(tmp_path / "media" / "a b.mp4")  # relative to the ids file
    assert rows[5]["source"] == str(tmp_path / "media" / "a b.mp4") and math.isnan(rows[5]["start"])
    assert rows[2]["input"] == f"{ids}:5"


def test_malformed_lines_and_duplicates_are_rejected_with_file_and_line(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("dQw4w9WgXcQ 1 2\nhello world\nx.mp4 5\nx.mp4 5 3\nftp://h/x.mp4\n"
                   "dQw4w9WgXcQ 00:00:01 00:00:02\nx.mp4 1:75 2:00\n")
    reqs = read_inputs([ids])
    assert reqs.table().num_rows == 1
    rej = reqs.rejected_table().to_pylist()
    assert [r["input"] for r in rej] == [f"{ids}:{n}" for n in (2, 3, 4, 5, 6, 7)]
    assert [r["status"] for r in rej] == ["failed"] * 4 + ["duplicate", "failed"]
    assert "not a YouTube id" in rej[0]["message"] and "hello world" in rej[0]["message"]
    assert "START and END" in rej[1]["message"]
    assert "must be after START" in rej[2]["message"]
    assert "unsupported URL scheme" in rej[3]["message"]
    assert rej[4]["key"] == "dQw4w9WgXcQ_1000_2000" and f"{ids}:1" in rej[4]["message"]
    assert "bad time" in rej[5]["message"]


def test_csv_jsonl_parquet_pass_extra_columns(tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text("video_id,start,end,label\ndQw4w9WgXcQ,1,3,cat\n,,,orphan\n")
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"url": "http://h/v.mp4", "start": 0, "end": 4, "tags": ["a"]}) + "\n"
                     + "not json\n")
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.table({"video_id": ["aaaaaaaaaaa"], "split": ["train"]}), parquet)
    reqs = read_inputs([csv, jsonl, parquet])
    rows = reqs.table().to_pylist()
    assert [r["request"] for r in rows] == ["dQw4w9WgXcQ_1000_3000", rows[1]["video_id"] + "_0_4000",
                                            "aaaaaaaaaaa"]
    assert json.loads(rows[0]["meta"]) == {"label": "cat"}
    assert json.loads(rows[1]["meta"]) == {"tags": ["a"]}
    assert json.loads(rows[2]["meta"]) == {"split": "train"}
    rej = reqs.rejected_table().to_pylist()
    assert [r["input"] for r in rej] == [f"{csv}:3", f"{jsonl}:2"]
    assert "video_id" in rej[0]["message"]


def test_an_input_file_that_cannot_be_input_refuses_the_run(tmp_path):
    with pytest.raises(InputFileError, match="input file not found"):
        read_inputs([tmp_path / "nope.txt"])
    fifo = tmp_path / "ids.fifo"
    os.mkfifo(fifo)  # reading it would block forever
    with pytest.raises(InputFileError, match="not a regular file"):
        read_inputs([fifo])
    garbage = tmp_path / "ids.txt"
    garbage.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(InputFileError, match="is not a text file"):
        read_inputs([garbage])
    latin1_csv = tmp_path / "in.csv"
    latin1_csv.write_bytes("video_id,label\ndQw4w9WgXcQ,caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputFileError, match="is not UTF-8"):
        read_inputs([latin1_csv])
    broken = tmp_path / "in.json"
    broken.write_text("[{")
    with pytest.raises(InputFileError, match="not valid JSON"):
        read_inputs([broken])


def test_a_nul_byte_in_a_source_is_invalid_input_in_every_format(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"dQw4w9WgXcQ 1 2\n/media/a\x00b.mp4 0 5\n")  # one NUL is a bad line, not a binary file
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text(json.dumps({"url": "/media/a\u0000b.mp4"}) + "\n")
    reqs = read_inputs([ids, jsonl])
    assert reqs.table()["request"].to_pylist() == ["dQw4w9WgXcQ_1000_2000"]
    rej = reqs.rejected_table().to_pylist()
    assert [(r["input"], r["error_class"]) for r in rej] == [(f"{ids}:2", "invalid_input"),
                                                            (f"{jsonl}:1", "invalid_input")]
    assert all("NUL byte" in r["message"] for r in rej)


def test_file_names_that_are_not_utf8_are_reached_byte_exact_with_ascii_keys(tmp_path):
    folder = os.fsencode(tmp_path)
    name = folder + b"/caf\xe9 \xff.mp4"  # Latin-1 and a byte no encoding maps: as the OS gives them
    with open(name, "wb") as f:
        f.write(b"media")
    ids_name = folder + b"/ids-\xe9.txt"
    with open(ids_name, "wb") as f:
        f.write(b"caf\xe9 \xff.mp4 0 5\n" + b"file://" + folder + b"/caf%E9%20%FF.mp4\n")
    reqs = read_inputs([os.fsdecode(ids_name)])
    rows = reqs.table().to_pylist()
    assert reqs.rejected_table().num_rows == 0 and len(rows) == 2
    for r in rows:
        assert r["source"].isascii() and r["source"].startswith("file://")
        assert os.fsencode(source_path(r["source"])) == name  # the same bytes reach the OS
        assert re.fullmatch(r"[A-Za-z0-9_-]+", r["key"])
    assert rows[0]["video_id"] == rows[1]["video_id"]  # one file, one id, however it was named
    assert rows[0]["input"] == f"{tmp_path}/ids-\\xe9.txt:1"  # the input line, readable and valid text
    # a UTF-8 path stays a plain path
    assert source_path(rows[0]["source"]) != rows[0]["source"]
    (tmp_path / "é.mp4").write_bytes(b"media")
    (tmp_path / "ids2.txt").write_text("é.mp4\n")
    assert read_inputs([tmp_path / "ids2.txt"]).table()["source"].to_pylist() == [str(tmp_path / "é.mp4")]


def test_keys_are_stable_and_safe():
    assert clip_key("a.b/c", 1.0004, 2.5) == "a-b-c_1000_2500"
    assert request_key("vid", math.nan, math.nan) == "vid"
    assert sanitize("..") == "x"
    assert video_id_for("http://h/x/My Clip.mp4") == video_id_for("http://h/x/My Clip.mp4")
    assert video_id_for("http://h/x/My Clip.mp4").startswith("My-Clip-")
    assert video_id_for("http://h/a/c.mp4") != video_id_for("http://h/b/c.mp4")
    assert youtube_id("https://www.youtube.com/watch?v=dQw4w9WgXcQ&t=3") == "dQw4w9WgXcQ"
    assert youtube_id("https://www.youtube.com/shorts/dQw4w9WgXcQ") == "dQw4w9WgXcQ"
    assert youtube_id("http://example.com/watch?v=dQw4w9WgXcQ") is None
    assert parse_time("01:02:03.5") == 3723.5 and parse_time("2:03") == 123 and parse_time("7") == 7
    for bad in ("-1", "nan", "1:60", "x"):
        with pytest.raises(ValueError):
            parse_time(bad)
