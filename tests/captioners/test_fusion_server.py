"""Fusion through a real OpenAI-compatible server on 127.0.0.1: ``transformers serve`` with
SmolLM2-135M-Instruct (``tests/llmserver.py``).

A server killed and restarted in the middle of a Ray run loses no row; requests in flight per actor
never exceed ``concurrency`` (counted at the server's sockets); HTTP 429s are retried, and rows fail
``rate_limited`` only when the retries run out; the API key is sent but written nowhere.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pyarrow as pa
import pytest
import webdataset as wds
import yaml

from tests.llmserver import LLMServer, RateLimitGate, smollm2_dir
from vast.captioners.fusion import FusionConfig, OmniCaptionFuser
from vast.captioners.llm import ServerOptions
from vast.config import from_dict, to_dict
from vast.pipeline.config import IngestConfig
from vast.pipeline.ingest import run_job, with_pipeline_columns
from vast.pipeline.stage import batch_of, rows_of
from vast.shards.ledger import read_ledger
from vast.shards.store import OutputStore

pytestmark = pytest.mark.slow

SECRET = "sk-vast-test-0f9e8d7c6b5a"
KEY_ENV = "VAST_TEST_LLM_KEY"
OK = {"status": "ok", "error_class": "", "message": "", "stage": ""}  # a row as the graph hands it
SCENES = [("a man cooks pasta in a kitchen", "water boils", "now add a pinch of salt"),
          ("a dog runs across a field", "a dog barks", ""),
          ("cars drive along a street at night", "horns honk", "watch out for the bus"),
          ("a woman sings on a stage", "a crowd cheers", "thank you all for coming")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LLMServer:
    with LLMServer(smollm2_dir(), tmp_path_factory.mktemp("llm") / "server.log") as srv:
        yield srv


def caption_rows(n: int) -> list[dict]:
    """Clip requests that already carry vision/audio captions and a subtitle (what fusion reads)."""
    rows = []
    for i in range(n):
        vision, audio, subtitle = SCENES[i % len(SCENES)]
        key = f"clip{i:03d}_0_5000"
        rows.append({"request": key, "key": key, "input": f"ids.txt:{i + 1}", "video_id": f"clip{i:03d}",
                     "source": f"/media/clip{i:03d}.mp4", "start": 0.0, "end": 5.0, "meta": "{}",
                     "vision_cap": [vision, f"scene number {i}"], "audio_cap": [audio], "subtitle": subtitle})
    return rows


def server_options(base_url: str, **overrides) -> dict:
    return {"base_url": base_url, "api_key_env": KEY_ENV, "concurrency": 2, "timeout_s": 120.0,
            "retries": 60, "backoff_s": 0.5, "backoff_max_s": 4.0, **overrides}


def fuser(base_url: str, model: str, **server) -> OmniCaptionFuser:
    return OmniCaptionFuser(FusionConfig(model=model, backend="openai-server", max_new_tokens=8,
                                         server=ServerOptions(**server_options(base_url, **server))))


def test_a_server_killed_and_restarted_mid_run_loses_no_row(server, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)  # before Ray starts: its workers inherit the driver's environment
    n = 16
    output = tmp_path / "out"
    cfg = from_dict(IngestConfig, {
        "output": str(output), "progress": False,
        "stages": {"fusion": {"actors": {"min": 1, "max": 2}, "num_cpus": 0.25, "batch_size": 2, "options": {
            "model": server.model, "backend": "openai-server", "max_new_tokens": 8,
            "server": server_options(server.base_url, concurrency=1)}}},  # slow enough to crash mid-run
        "shards": {"samples_per_shard": 2, "num_cpus": 0.25},
        "ray": {"num_cpus": 2, "object_store_mb": 256}})
    requests = with_pipeline_columns(pa.Table.from_pylist(caption_rows(n)), {})

    events: dict[str, float] = {}

    def crash_and_restart() -> None:
        parts = output / "ledger"
        while not (parts.exists() and any(parts.glob("part-*.parquet"))):  # the first commit has landed
            time.sleep(0.05)
        server.kill()
        events["killed"] = time.time()
        time.sleep(1.0)
        server.start()
        events["restarted"] = time.time()

    chaos = threading.Thread(target=crash_and_restart, daemon=True)
    chaos.start()
    run_job(cfg, lambda store, state: (requests, n))
    chaos.join(timeout=600)
    assert "restarted" in events, "the server was never restarted"

    ledger = read_ledger(OutputStore(str(output))).to_pylist()
    assert Counter(r["key"] for r in ledger) == Counter(r["key"] for r in caption_rows(n))  # each row once
    failed = [r for r in ledger if r["status"] != "ok"]
    assert all(r["error_class"] in ("network", "rate_limited") and r["message"] for r in failed), failed
    ok_times = sorted(r["time"] for r in ledger if r["status"] == "ok")
    assert ok_times[0] < events["killed"]  # a commit before the crash ...
    assert ok_times[-1] > events["restarted"]  # ... and rows fused by the restarted server

    samples = list(wds.WebDataset(sorted(str(p) for p in output.glob("shard-*.tar")), shardshuffle=False))
    assert len(samples) == n - len(failed)
    for s in samples:
        meta = json.loads(s["json"])
        assert isinstance(meta["vast_cap"], str) and meta["vast_cap"].strip()
        record = meta["provenance"]["vast_cap"]
        assert record["backend"] == "openai-server" and record["api"] == "chat"
        assert record["served_model"] == server.model  # as the server reported it
        assert record["decoding"] == {"max_new_tokens": 8, "do_sample": False, "seed": 0}
    # the key went to the server's environment variable only: no output file or config dump holds it
    written = b"".join(p.read_bytes() for p in output.rglob("*") if p.is_file())
    assert SECRET.encode() not in written
    assert SECRET not in yaml.safe_dump(to_dict(cfg)) and KEY_ENV in yaml.safe_dump(to_dict(cfg))


def test_requests_in_flight_per_actor_never_exceed_concurrency(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    rows = [{**OK, "key": r["key"], **{k: r[k] for k in ("vision_cap", "audio_cap", "subtitle")}}
            for r in caption_rows(6)]

    def peak_connections(concurrency: int) -> tuple[int, list[dict]]:
        stage = fuser(server.base_url, server.model, concurrency=concurrency)
        seen, done = [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                seen[0] = max(seen[0], server.established())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            out = rows_of(stage(batch_of(rows)))
        finally:
            done.set()
            sampler.join()
        return seen[0], out

    bounded, out = peak_connections(2)
    assert 1 <= bounded <= 2
    assert [r["status"] for r in out] == ["ok"] * len(rows) and all(r["vast_cap"] for r in out)
    wide, _ = peak_connections(6)  # the control: the server's sockets do show more when more are allowed
    assert wide > 2


def test_rate_limits_are_retried_and_fail_as_rate_limited_only_when_retries_run_out(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    rows = [{**OK, "key": f"k{i}", "vision_cap": ["a cat sleeps on a sofa"],
             "audio_cap": ["purring"], "subtitle": ""} for i in range(2)]
    gate = RateLimitGate(server.base_url, limited=4)
    try:
        out = rows_of(fuser(gate.base_url, server.model, backoff_s=0.01)(batch_of(rows)))
        assert [r["status"] for r in out] == ["ok"] * 2 and all(r["vast_cap"] for r in out)
        assert gate.statuses.count(429) == 4 and gate.statuses.count(200) == 2
        assert set(gate.authorizations) == {f"Bearer {SECRET}"}  # the key is sent, as a bearer token
    finally:
        gate.close()
    gate = RateLimitGate(server.base_url, limited=1000)
    try:
        out = rows_of(fuser(gate.base_url, server.model, retries=1, backoff_s=0.01)(batch_of(rows)))
    finally:
        gate.close()
    failed = [(r["status"], r["error_class"], r["stage"]) for r in out]
    assert failed == [("failed", "rate_limited", "fusion")] * 2
    assert all("HTTP 429" in r["message"] and "gave up after 2 attempts" in r["message"] for r in out)
    assert SECRET not in json.dumps([r["message"] for r in out])
    assert len(gate.statuses) == 4  # two attempts per row, no more


def test_the_completions_api_takes_the_plain_prompt(server):
    stage = OmniCaptionFuser(FusionConfig(model=server.model, backend="openai-server", max_new_tokens=16,
                                          server=ServerOptions(base_url=server.base_url, api="completions")))
    rows = [{**OK, "key": "k", "vision_cap": ["a dog runs in a park"], "audio_cap": ["barking"],
             "subtitle": "good boy"}]
    prompt = stage.prompts(rows)[0]
    assert prompt.startswith("Human: About one video") and prompt.endswith('Assistant: The sentence is "')
    out = rows_of(stage(batch_of(rows)))
    assert out[0]["status"] == "ok" and out[0]["vast_cap"]
    assert json.loads(out[0]["provenance"])["vast_cap"]["api"] == "completions"
