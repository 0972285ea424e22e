import json

import webdataset as wds

from vast.cli import main
from vast.pipeline.config import load_config
from vast.pipeline.ingest import ingest
from vast.shards.vast27m import clock


def test_vast27m_annotations_round_trip_through_ingest_and_export(tmp_path, media_root):
    records = [
        {"id": "clip-a", "url": str(media_root / "speech.mp4"), "begin_s": 1.0, "end_s": 6.0,
         "begin_t": "00:00:01.000", "end_t": "00:00:06.000", "vision_cap": ["a test card", "colour bars"],
         "audio_cap": ["a man speaks"], "subtitle": "this is a test",
         "vast_cap": "A man speaks over a test card."},
        {"clip_id": "clip-b", "url": str(media_root / "tone.mp4"), "begin_t": "00:00:02.000",
         "end_t": "00:00:07.500", "vision_cap": "one caption as a string", "vast_cap": "A tone plays."},
        {"id": "bad", "url": str(media_root / "tone.mp4"), "begin_s": 0, "end_s": 3, "vision_cap": [1, 2]},
    ]
    annotations = tmp_path / "vast27m.json"
    annotations.write_text(json.dumps(records))
    output = str(tmp_path / "out")
    summary = ingest([str(annotations)], load_config("tiny", {"output": output, "progress": False}))
    assert summary["clips"] == {"ok": 2, "failed": 1} and summary["errors"] == {"invalid_input": 1}

    tars = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    samples = {s["__key__"]: s for s in wds.WebDataset(tars, shardshuffle=False)}
    metas = [json.loads(s["json"]) for s in samples.values()]
    a = next(m for m in metas if m["meta"].get("id") == "clip-a")
    assert a["vision_cap"] == ["a test card", "colour bars"] and a["subtitle"] == "this is a test"
    assert a["provenance"]["vast_cap"]["imported_from"].endswith("vast27m.json:[0]")
    txt = [s["txt"] for s in samples.values()]
    assert sorted(txt) == [b"A man speaks over a test card.", b"A tone plays."]

    out_json = tmp_path / "export.json"
    assert main(["export", output, str(out_json)]) == 0
    exported = sorted(json.loads(out_json.read_text()), key=lambda r: r["begin_s"])
    assert [(r["begin_s"], r["end_s"], r["begin_t"], r["end_t"]) for r in exported] == [
        (1.0, 6.0, "00:00:01.000", "00:00:06.000"), (2.0, 7.5, "00:00:02.000", "00:00:07.500")]
    assert exported[0]["vision_cap"] == records[0]["vision_cap"]
    assert exported[0]["audio_cap"] == records[0]["audio_cap"]
    assert exported[0]["vast_cap"] == records[0]["vast_cap"]
    assert exported[1]["vision_cap"] == ["one caption as a string"] and exported[1]["subtitle"] == ""


def test_clock_format():
    assert clock(3723.5) == "01:02:03.500" and clock(0.0004) == "00:00:00.000"
