"""The report's small rules: words as Python's ``str.split`` counts them, provenance labels for every
record form the stages and the VAST-27M import write, runs split at long pauses."""

from __future__ import annotations

import json

import pyarrow as pa

from vast.report.stats import infer_runs, provenance_labels, word_counts


def test_word_counts_equal_python_split():
    texts = ["a b", "  lead and trail  ", "tab\tsep\nnew line", "", "   ", "nbsp\xa0sep", "ideo\u3000graphic",
             "ümlaut wörds", "one"]
    assert word_counts(pa.array(texts)).tolist() == [len(t.split()) for t in texts]
    assert word_counts(pa.array([None, "x y"])).tolist() == [0, 2]


def test_provenance_labels_name_model_weights_and_prompt():
    record = {
        "vision_cap": {"model": "out/models/vision_captioner.pt", "weights_sha256": "3a817f8b" + "0" * 56},
        "vast_cap": {"model": "models/vicuna-13b-v1.5/", "weights_sha256": "48964092" + "1" * 56,
                     "prompt": {"name": "omni-v1", "version": 2, "sha256": "ff"}},
        "subtitle": {"imported_from": "/data/vast27m/annotations.json:1234"},
        "audio_cap": {"model": "m.pt", "stale": True},
        "other": {"something": "new"},
    }
    assert provenance_labels(json.dumps(record)) == {
        "vision_cap": "vision_captioner.pt · sha256 3a817f8b",
        "vast_cap": "vicuna-13b-v1.5 · sha256 48964092 · prompt omni-v1 v2",
        "subtitle": "imported from annotations.json",
        "audio_cap": "m.pt · stale",
        "other": '{"something": "new"}',
    }
    assert provenance_labels("not json") == {} and provenance_labels("[1]") == {}


def test_runs_split_at_long_pauses():
    times = [0, 10, 20, 30, 4000, 4010]
    commits = [{"commit": i, "time": t, "ok": 4, "failed": 1} for i, t in enumerate(times)]
    runs = infer_runs(commits)
    assert [(r.first_commit, r.last_commit, r.clips) for r in runs] == [(0, 3, 20), (4, 5, 10)]
    assert runs[0].clips_per_s == 15 / 30 and runs[1].clips_per_s == 5 / 10
    assert infer_runs(commits[:1])[0].clips_per_s is None
