import dataclasses

import pytest

from vast.config import PRESET_DIR, ConfigError, describe, field_docs, from_dict, load_yaml
from vast.pipeline.config import IngestConfig, StageSpec, load_config
from vast.pipeline.stage import stage_config

INGEST_PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", INGEST_PRESETS)
def test_every_ingest_preset_builds_its_config(name):
    cfg = load_config(name)
    assert isinstance(cfg, IngestConfig) and cfg.stages
    for stage, spec in cfg.stages.items():
        assert isinstance(spec, StageSpec)
        assert dataclasses.is_dataclass(stage_config(stage, spec.options))


def test_presets_include_demo_and_vast27m():
    assert {"demo", "vast27m", "tiny"} <= set(INGEST_PRESETS)
    assert load_config("vast27m").stages["media"].options["max_clip_s"] == 30.0


def test_overrides_are_typed_and_checked():
    cfg = load_config("demo", {"shards.samples_per_shard": "7", "stages.media.options.crf": "30",
                               "ray.address": "127.0.0.1:6379"})
    assert cfg.shards.samples_per_shard == 7 and cfg.ray.address == "127.0.0.1:6379"
    assert stage_config("media", cfg.stages["media"].options).crf == 30
    with pytest.raises(ConfigError, match="unknown key"):
        load_config("demo", {"shards.samples_per_shard_typo": "1"})
    with pytest.raises(ConfigError, match="expected int"):
        load_config("demo", {"shards.samples_per_shard": "many"})
    with pytest.raises(ConfigError, match=r"stages\.media\.options\.: unknown key"):
        load_config("demo", {"stages.media.options.nope": "1"})
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        load_config("demo", {"stages.nope.batch_size": "1"})
    with pytest.raises(ConfigError, match="no config file or preset named 'missing'"):
        load_yaml("missing")


def test_base_presets_merge_and_docs_are_read():
    tiny = load_yaml("tiny")
    assert tiny["stages"]["fetch"]["options"]["max_height"] == 360  # from demo, its base
    assert tiny["stages"]["media"]["options"]["max_height"] == 144
    assert "Rows per commit" in field_docs(type(load_config("tiny").shards))["samples_per_shard"]
    names = [row[0] for row in describe(IngestConfig)]
    assert "shards.samples_per_shard" in names and "ray.address" in names


def test_from_dict_rejects_wrong_types():
    @dataclasses.dataclass
    class C:
        a: int = 1
        b: list[str] = dataclasses.field(default_factory=list)
        c: float | None = None

    assert from_dict(C, {"a": 2, "b": ["x"], "c": 3}).c == 3.0
    with pytest.raises(ConfigError, match=r"b\[0\]"):
        from_dict(C, {"b": [{"x": 1}]})
    with pytest.raises(ConfigError, match="expected int"):
        from_dict(C, {"a": True})
