"""The ingest job's typed config: the stage graph, shards, Ray and run options (presets in ``configs/``).

``graph.py`` builds the Ray graph from it and ``ingest.py`` runs it; both import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vast.config import ConfigError, apply_override, from_dict, load_yaml
from vast.pipeline.stage import stage_config


@dataclass
class ActorPool:
    """An autoscaling actor pool: Ray Data starts ``min`` actors and adds actors, up to ``max``, while
    work queues up and the cluster has their resources; idle ones are released."""

    min: int = 1
    """Actors kept running (each loads the stage's model once)."""
    max: int = 1
    """Most actors at once: set it from the GPUs (``max × num_gpus``) the stage may take."""

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max:
            raise ConfigError(f"actors: needs 1 <= min <= max, got min={self.min}, max={self.max}")


@dataclass
class StageSpec:
    """How one stage of the graph runs (its own settings live in ``options``)."""

    num_cpus: float = 1.0
    """CPU cores reserved per task or actor; fractions let I/O-bound stages overlap."""
    num_gpus: float = 0.0
    """GPUs per actor, fractional for small models (0.25: four actors share a GPU); 0 runs on CPU."""
    actors: int | ActorPool = 0
    """0: run as Ray tasks; N > 0: a fixed pool of N actors, each building the stage (its model) once;
    ``{min: A, max: B}``: an autoscaling pool of A to B such actors."""
    batch_size: int = 4
    """Rows per call of the stage."""
    options: dict[str, Any] = field(default_factory=dict)
    """The stage's own config (its ``Config`` dataclass, e.g. ``FetchConfig``), checked by name."""

    def __post_init__(self) -> None:
        if isinstance(self.actors, int) and self.actors < 0:
            raise ConfigError(f"actors: expected 0, a pool size N > 0 or {{min, max}}, got {self.actors}")
        if self.num_gpus < 0 or (self.num_gpus > 1 and not float(self.num_gpus).is_integer()):
            raise ConfigError(f"num_gpus: a fraction up to 1 or a whole number of GPUs, got {self.num_gpus}")


@dataclass
class ShardOptions:
    """How committed shards are cut."""

    samples_per_shard: int = 200
    """Rows per commit: ok samples go to one tar, every row to one ledger part."""
    num_cpus: float = 0.25
    """CPU reserved per shard-writing task."""


@dataclass
class RayOptions:
    """Where the graph runs."""

    address: str | None = None
    """Ray cluster address (``ray://…`` or ``host:port``); unset with no RAY_ADDRESS: local Ray."""
    num_cpus: int | None = None
    """CPUs of the embedded local Ray (default: all cores)."""
    object_store_mb: int = 1024
    """Object store size of the embedded local Ray, in MiB."""
    window_requests: int = 20000
    """Requests handed to Ray per streaming window: bounds the plan's share of the object store."""


@dataclass
class IngestConfig:
    """Everything ``vast-pipeline ingest`` does, as one typed config (presets in ``configs/``)."""

    output: str = "out"
    """Output directory or URL (``s3://bucket/corpus`` …): shards, manifests, ledger, summary."""
    stages: dict[str, StageSpec] = field(default_factory=lambda: {"fetch": StageSpec(num_cpus=0.25),
                                                                  "media": StageSpec()})
    """The graph, in order: stage name → how it runs and its options."""
    shards: ShardOptions = field(default_factory=ShardOptions)
    ray: RayOptions = field(default_factory=RayOptions)
    strict: bool = False
    """Refuse the whole run, before any work, when an input line is malformed."""
    progress: bool = True
    """Show a live progress bar on stderr."""
    notice: str | None = None
    """A line printed before and after every run of this config (the demo says its captions are
    meaningless)."""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("stages: at least one stage is needed")
        for name, spec in self.stages.items():
            stage_config(name, spec.options)  # unknown stage or bad option: fail now, not in a worker


def load_config(preset: str = "demo", overrides: dict[str, Any] | None = None) -> IngestConfig:
    """A preset name or YAML file, with dotted overrides applied on top."""
    data = load_yaml(preset)
    for dotted, value in (overrides or {}).items():
        apply_override(data, dotted, value)
    return from_dict(IngestConfig, data)
