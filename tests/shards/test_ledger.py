import math

import pyarrow as pa

from vast.pipeline.ingest import claim_keys, plan_todo, retry_requests
from vast.pipeline.inputs import REQUEST_SCHEMA
from vast.shards.ledger import (
    ClipOwners,
    apply_verdicts,
    effective,
    ledger_row,
    ledger_table,
    pending_requests,
    resume_state,
)


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


def test_an_interrupted_retry_keeps_the_video_retryable_until_every_clip_is_settled():
    failed_video = row("w", "w", "failed", "network", commit=0, start=math.nan, end=math.nan)
    clips = [row(f"w_{i * 6000}_{i * 6000 + 6000}", "w", "ok", commit=1 + i, n_clips=4, start=6.0 * i,
                 end=6.0 * i + 6) for i in range(4)]
    # the retry committed two of the four clips, then was killed
    eff = effective(ledger_table([failed_video, *clips[:2]]))
    assert [(r["key"], r["status"]) for r in eff.to_pylist()] == [
        ("w", "failed"), ("w_0_6000", "ok"), ("w_6000_12000", "ok")]
    state = resume_state(eff)
    assert state.done_requests.to_pylist() == [] and state.partial == {"w": ["w_0_6000", "w_6000_12000"]}
    failed = eff.filter(pa.compute.equal(eff["error_class"], "network"))
    requests, skip = retry_requests(eff, failed)
    assert requests["request"].to_pylist() == ["w"] and math.isnan(requests["start"][0].as_py())
    assert skip == {"w": ["w_0_6000", "w_6000_12000"]}
    # once every clip is settled the video's own failure is superseded
    eff = effective(ledger_table([failed_video, *clips]))
    assert "w" not in eff["key"].to_pylist()
    assert resume_state(eff).done_requests.to_pylist() == ["w"]
    # a failure newer than its clips (the video itself failed again later) stays
    again = row("w", "w", "failed", "network", commit=9, start=math.nan, end=math.nan)
    assert "w" in effective(ledger_table([*clips, again]))["key"].to_pylist()


def test_a_clip_owned_by_another_request_counts_for_the_whole_video_once_its_owner_settled_it():
    span = row("w_6000_12000", "w_6000_12000", "ok", commit=0, start=6.0, end=12.0, inp="ids.txt:2")
    mine = row("w_0_6000", "w", "ok", commit=1, n_clips=2)
    skipped = row("w_6000_12000", "w", "duplicate", commit=1, n_clips=2, start=6.0, end=12.0)
    state = resume_state(effective(ledger_table([span, mine, skipped])))
    assert sorted(state.done_requests.to_pylist()) == ["w", "w_6000_12000"]
    assert state.rejected_inputs.to_pylist() == []  # the whole video's line is not a rejected line
    # the owner never settled its clip (it left the input): the whole video cuts it after all
    state = resume_state(effective(ledger_table([mine, skipped])))
    assert state.done_requests.to_pylist() == [] and state.partial == {"w": ["w_0_6000"]}


def test_pending_requests_name_how_far_each_got():
    eff = effective(ledger_table([
        row("w", "w", "failed", "network", commit=0, start=math.nan, end=math.nan),
        row("w_0_6000", "w", "ok", commit=1, n_clips=3),
        row("a_0_5000", "a_0_5000", "ok", commit=1, inp="ids.txt:2"),
    ]))
    planned = pa.table({"request": ["w", "a_0_5000", "b"], "input": ["ids.txt:1", "ids.txt:2", "ids.txt:3"]})
    pending = pending_requests(planned, eff).to_pylist()
    assert pending == [
        {"request": "w", "input": "ids.txt:1", "clips": 1, "n_clips": 3, "error_class": "network"},
        {"request": "b", "input": "ids.txt:3", "clips": None, "n_clips": None, "error_class": None}]


def test_clip_owners_commit_each_key_once_across_batches():
    owners = ClipOwners({"v_0_5000": ("v", "ids.txt:1", True),
                         "v_5000_9000": ("v_5000_9000", "ids.txt:2", False)})
    first = owners.verdicts([
        ("v_0_5000", "v", "ids.txt:1", "duplicate"),          # its own committed clip, skipped: drop
        ("v_5000_9000", "v", "ids.txt:1", "duplicate"),       # the span's clip, skipped: a duplicate row
        ("v_5000_9000", "v_5000_9000", "ids.txt:2", "ok"),    # the reserved owner: kept
        ("x_0_1000", "x_0_1000", "ids.txt:3", "failed"),      # a new key: claimed
    ])
    assert [v for v, _ in first] == ["drop", "duplicate", "keep", "keep"]
    assert "ids.txt:2" in first[1][1]
    second = owners.verdicts([
        ("v_5000_9000", "v", "ids.txt:1", "ok"),              # another batch cut it too: never twice
        ("v_5000_9000", "v_5000_9000", "ids.txt:2", "ok"),    # its owner again (another batch): settled
        ("x_0_1000", "x_0_1000", "ids.txt:3", "ok"),          # a retry of its own failure: kept
        ("x_0_1000", "x_0_1000", "ids.txt:3", "failed"),      # never a failure over an ok
    ])
    assert [v for v, _ in second] == ["duplicate", "drop", "keep", "drop"]
    rows = [{"key": k, "request": r, "input": i, "status": s, "message": ""} for k, r, i, s in [
        ("v_5000_9000", "v", "ids.txt:1", "ok"), ("a", "a", "ids.txt:5", "ok")]]
    kept = apply_verdicts(rows, [("duplicate", "clip belongs to ids.txt:2"), ("keep", "")])
    assert [(r["status"], r["message"]) for r in kept] == [("duplicate", "clip belongs to ids.txt:2"),
                                                           ("ok", "")]


def test_claim_keys_reserves_spans_before_whole_videos_are_cut():
    settled = effective(ledger_table([
        row("v_0_6000", "v", "ok", commit=0, n_clips=2),
        row("v_6000_12000", "v", "ok", commit=0, n_clips=2, start=6.0, end=12.0),
    ]))
    requests = pa.Table.from_pylist([
        {"request": "u", "key": "u", "input": "ids.txt:1", "video_id": "u", "source": "/m/u.mp4",
         "start": math.nan, "end": math.nan, "meta": "{}"},
        {"request": "u_6000_12000", "key": "u_6000_12000", "input": "ids.txt:2", "video_id": "u",
         "source": "/m/u.mp4", "start": 6.0, "end": 12.0, "meta": "{}"},
        {"request": "v_6000_12000", "key": "v_6000_12000", "input": "ids.txt:3", "video_id": "v",
         "source": "/m/v.mp4", "start": 6.0, "end": 12.0, "meta": "{}"}], schema=REQUEST_SCHEMA)
    state = resume_state(settled)
    claims = claim_keys(plan_todo(requests, state), state)
    todo = claims.todo.to_pylist()
    # the whole video u skips the span's clip; the span v_6000_12000 is a clip v already settled
    assert [(r["request"], r["skip_keys"]) for r in todo] == [("u", ["u_6000_12000"]), ("u_6000_12000", [])]
    (dup,) = claims.duplicates.to_pylist()
    assert (dup["input"], dup["status"], dup["key"]) == ("ids.txt:3", "duplicate", "v_6000_12000")
    assert "v_6000_12000" in dup["message"] and "request v" in dup["message"]
    assert claims.owners == {"u_6000_12000": ("u_6000_12000", "ids.txt:2", False)}


def test_a_video_that_failed_again_after_it_was_cut_is_refetched_for_its_failed_clips_only():
    clips = [row("w_0_6000", "w", "ok", commit=0, n_clips=2),
             row("w_6000_12000", "w", "failed", "decode_error", commit=0, n_clips=2, start=6.0, end=12.0)]
    # a retry of the decode_error whose fetch failed: the video's own row, newer than its clips
    again = row("w", "w", "failed", "network", commit=1, start=math.nan, end=math.nan)
    eff = effective(ledger_table([*clips, again]))
    failed = eff.filter(pa.compute.equal(eff["error_class"], "network"))
    requests, skip = retry_requests(eff, failed)
    assert requests["request"].to_pylist() == ["w"] and skip == {"w": ["w_0_6000"]}


def test_a_failed_video_whose_clips_all_belong_to_others_is_superseded():
    failed = row("w", "w", "failed", "network", commit=0, start=math.nan, end=math.nan)
    span = row("w_0_6000", "w_0_6000", "ok", commit=0, inp="ids.txt:2")
    skipped = row("w_0_6000", "w", "duplicate", commit=1, n_clips=1)
    eff = effective(ledger_table([failed, span, skipped]))
    assert [(r["key"], r["status"]) for r in eff.to_pylist()] == [("w_0_6000", "ok"),
                                                                  ("w_0_6000", "duplicate")]
    assert sorted(resume_state(eff).done_requests.to_pylist()) == ["w", "w_0_6000"]
