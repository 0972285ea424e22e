"""Actor pools that follow the cluster: ``actors: N`` or ``actors: {min, max}``, fractional GPUs, and an
autoscaling pool running a model stage on a local Ray."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pytest
import webdataset as wds

from vast.config import ConfigError, from_dict
from vast.pipeline.config import ActorPool, IngestConfig, StageSpec, load_config
from vast.pipeline.graph import actor_pool
from vast.pipeline.ingest import run_job, with_pipeline_columns
from vast.pipeline.stage import stage_class
from vast.shards.ledger import read_ledger
from vast.shards.store import OutputStore


def test_actors_is_a_pool_size_or_an_autoscaling_range():
    assert from_dict(StageSpec, {"actors": 3}).actors == 3
    spec = from_dict(StageSpec, {"actors": {"min": 1, "max": 4}, "num_gpus": 0.25})
    assert spec.actors == ActorPool(min=1, max=4) and spec.num_gpus == 0.25
    fixed, scaling = actor_pool(from_dict(StageSpec, {"actors": 3})), actor_pool(spec)
    assert (fixed.min_size, fixed.max_size) == (3, 3)
    assert (scaling.min_size, scaling.max_size) == (1, 4)
    for bad, message in [({"actors": {"min": 3, "max": 2}}, "min <= max"), ({"actors": {"min": 0, "max": 2}},
                         "min <= max"), ({"actors": -1}, "actors"), ({"actors": {"size": 2}}, "unknown key"),
                         ({"num_gpus": 1.5}, "whole number"), ({"num_gpus": -0.5}, "num_gpus")]:
        with pytest.raises(ConfigError, match=message):
            from_dict(StageSpec, bad)


def test_vast27m_runs_every_model_stage_on_an_autoscaling_pool():
    from vast.captioners.base import ModelStage

    cfg = load_config("vast27m")
    model_stages = {n: s for n, s in cfg.stages.items() if issubclass(stage_class(n), ModelStage)}
    assert set(model_stages) == {"vision_caption", "audio_caption", "subtitle", "fusion"}
    for name, spec in model_stages.items():
        assert isinstance(spec.actors, ActorPool) and spec.actors.max > spec.actors.min, name
        assert 0 < spec.num_gpus <= 1, name
    assert any(spec.num_gpus < 1 for spec in model_stages.values())  # small models share a GPU
    overridden = load_config("vast27m", {"stages.fusion.actors": "{min: 2, max: 16}"})
    assert overridden.stages["fusion"].actors == ActorPool(min=2, max=16)


def test_an_autoscaling_pool_runs_a_model_stage_on_local_ray(tmp_path):
    from vast.captioners.tiny_lm import write_tiny_lm

    lm = write_tiny_lm(tmp_path / "lm")
    n = 12
    rows = [{"request": f"v{i}_0_1000", "key": f"v{i}_0_1000", "input": f"ids.txt:{i + 1}",
             "video_id": f"v{i}", "source": f"/m/v{i}.mp4", "start": 0.0, "end": 1.0, "meta": "{}",
             "vision_cap": [f"a scene with {i} birds"], "audio_cap": ["wind"], "subtitle": ""}
            for i in range(n)]
    cfg = from_dict(IngestConfig, {
        "output": str(tmp_path / "out"), "progress": False,
        "stages": {"fusion": {"actors": {"min": 1, "max": 2}, "num_cpus": 0.25, "batch_size": 2,
                              "options": {"model": str(lm), "max_new_tokens": 6}}},
        "shards": {"samples_per_shard": 4, "num_cpus": 0.25}, "ray": {"num_cpus": 2, "object_store_mb": 256}})
    run_job(cfg, lambda store, state: (with_pipeline_columns(pa.Table.from_pylist(rows), {}), n))

    ledger = read_ledger(OutputStore(cfg.output)).to_pylist()
    assert Counter(r["key"] for r in ledger) == Counter(r["key"] for r in rows)
    assert {r["status"] for r in ledger} == {"ok"}
    shards = sorted(str(p) for p in (tmp_path / "out").glob("shard-*.tar"))
    samples = [json.loads(s["json"]) for s in wds.WebDataset(shards, shardshuffle=False)]
    assert len(samples) == n
    assert all(s["provenance"]["vast_cap"]["backend"] == "transformers" for s in samples)
