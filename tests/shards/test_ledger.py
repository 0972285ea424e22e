import math

import pyarrow as pa

from vast.pipeline.ingest import plan_todo, retry_requests
from vast.pipeline.inputs import REQUEST_SCHEMA
from vast.shards.ledger import effective, ledger_row, ledger_table, resume_state


def row(key, request, status="ok", cls="", commit=0, n_clips=1, start=0.0, end=5.0, inp="ids.txt:1"):
    r = {"key": key, "request": request, "input": inp, "video_id": "v", "source": "/m/v.mp4",
         "start": start, "end": end, "n_clips": n_clips, "status": status, "error_class": cls,
         "message": f"{cls} happened" if cls else ""}
    return ledger_row(r, commit)


def test_latest_commit_wins_and_video_failure_is_superseded_by_its_clips():
    raw = ledger_table([
        row("v_0_5000", "v_0_5000", "failed", "network", commit=0),
        row("w", "w", "failed", "rate_limited", commit=0, start=math.nan, end=math.nan, inp="ids.txt:2"),
        row("", "", "failed", "invalid_input", commit=0, inp="ids.txt:3"),
        row("v_0_5000", "v_0_5000", "duplicate", commit=0, inp="ids.txt:4"),
        row("v_0_5000", "v_0_5000", "ok", commit=1),
        row("w_0_6000", "w", "ok", commit=2, n_clips=2, inp="ids.txt:2"),
        row("w_6000_12000", "w", "failed", "decode_error", commit=2, n_clips=2, inp="ids.txt:2"),
    ])
    eff = effective(raw).to_pylist()
    settled = [(r["key"], r["status"]) for r in eff if r["status"] != "duplicate" and r["key"]]
    assert sorted(settled) == [("v_0_5000", "ok"), ("w_0_6000", "ok"), ("w_6000_12000", "failed")]
    assert [r["input"] for r in eff if r["error_class"] == "invalid_input"] == ["ids.txt:3"]
    assert [r["input"] for r in eff if r["status"] == "duplicate"] == ["ids.txt:4"]

    state = resume_state(effective(raw))
    assert sorted(state.done_requests.to_pylist()) == ["v_0_5000", "w"]
    assert sorted(state.rejected_inputs.to_pylist()) == ["ids.txt:3", "ids.txt:4"]


def test_partly_settled_video_is_resumed_with_skip_keys():
    raw = ledger_table([row("w_0_6000", "w", "ok", commit=0, n_clips=3)])
    state = resume_state(effective(raw))
    assert state.done_requests.to_pylist() == [] and state.partial == {"w": ["w_0_6000"]}
    requests = pa.Table.from_pylist([
        {"request": "w", "key": "w", "input": "ids.txt:1", "video_id": "w", "source": "/m/w.mp4",
         "start": math.nan, "end": math.nan, "meta": "{}"},
        {"request": "x_0_1000", "key": "x_0_1000", "input": "ids.txt:2", "video_id": "x",
         "source": "/m/x.mp4", "start": 0.0, "end": 1.0, "meta": "{}"}], schema=REQUEST_SCHEMA)
    todo = plan_todo(requests, state).to_pylist()
    assert [(r["request"], r["skip_keys"], r["status"]) for r in todo] == [
        ("w", ["w_0_6000"], "ok"), ("x_0_1000", [], "ok")]


def test_retry_rebuilds_requests_of_the_chosen_class_only():
    eff = effective(ledger_table([
        row("a_0_5000", "a_0_5000", "failed", "rate_limited"),
        row("b_0_5000", "b_0_5000", "failed", "unavailable"),
        row("w_0_6000", "w", "ok", n_clips=2),
        row("w_6000_12000", "w", "failed", "rate_limited", n_clips=2, start=6.0, end=12.0),
    ]))
    failed = eff.filter(pa.compute.equal(eff["error_class"], "rate_limited"))
    requests, skip = retry_requests(eff, failed)
    reqs = requests.to_pylist()
    assert [r["request"] for r in reqs] == ["a_0_5000", "w"]
    assert reqs[0]["start"] == 0.0 and math.isnan(reqs[1]["start"])  # the video is re-cut whole
    assert skip == {"w": ["w_0_6000"]}
