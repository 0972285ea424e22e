"""The one streaming Ray Data graph: requests → configured stages → committed shards.

The graph is built from the config's ordered ``stages`` mapping: each name is looked up in the
stage registry (``vast.pipeline.stage.STAGES``), so a new stage plugs in by registering it and
naming it in a preset — this file does not change. Stages without ``actors`` run as Ray tasks;
stages with ``actors: N`` run on a pool of N actors that construct the stage (and load its model)
once. The last operator (Ray tasks) commits each batch of ``shards.samples_per_shard`` rows as
one shard and sends only the small ledger rows back to the driver, so memory stays bounded by the
pipeline's width, not the input's length.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from vast.pipeline.config import ActorPool, IngestConfig, RayOptions, StageSpec
from vast.pipeline.stage import rows_of, stage_class, stage_config


def init_ray(opts: RayOptions) -> None:
    """Connect to ``opts.address``/``RAY_ADDRESS``, or start the embedded local Ray on loopback."""
    import ray

    if ray.is_initialized():
        return
    address = opts.address or os.environ.get("RAY_ADDRESS")
    common: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **common)
    else:
        # "local": always a new embedded cluster, never one that happens to run on this machine
        ray.init(address="local", num_cpus=opts.num_cpus, object_store_memory=opts.object_store_mb * 2**20,
                 include_dashboard=False, _node_ip_address="127.0.0.1", **common)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _make_counter(start: int) -> Any:
    import ray

    @ray.remote(num_cpus=0)
    class CommitCounter:
        """Hands out commit numbers; the same batch (by content) always gets the same number."""

        def __init__(self, start: int):
            self.next = start
            self.numbers: dict[str, int] = {}

        def number(self, digest: str) -> int:
            if digest not in self.numbers:
                self.numbers[digest] = self.next
                self.next += 1
            return self.numbers[digest]

    return CommitCounter.remote(start)


def _run_stage(name: str, config: Any, batch: dict[str, Any]) -> dict[str, Any]:
    return _stage_instance(name, config)(batch)


_STAGE_CACHE: dict[tuple[str, str], Any] = {}


def _stage_instance(name: str, config: Any) -> Any:
    # task-run stages are cheap to build, but a worker process reuses one per config anyway
    key = (name, repr(config))
    if key not in _STAGE_CACHE:
        _STAGE_CACHE[key] = stage_class(name)(config)
    return _STAGE_CACHE[key]


def _commit_batch(output: str, counter: Any, batch: dict[str, Any]) -> pa.Table:
    """The graph's sink: one call, one commit; a retried task gets the same commit number."""
    import ray

    from vast.shards.writer import ShardWriter

    rows = rows_of(batch)
    digest = hashlib.sha1("\n".join(sorted(f"{r['key']}|{r['input']}|{r['status']}" for r in rows))
                          .encode()).hexdigest()
    number = ray.get(counter.number.remote(digest))
    return ShardWriter(output).commit(rows, number)


def actor_pool(spec: StageSpec) -> Any:
    """The Ray Data compute strategy of an actor stage: a fixed pool of ``actors: N`` or an
    autoscaling pool of ``actors: {min, max}``."""
    import ray

    if isinstance(spec.actors, ActorPool):
        return ray.data.ActorPoolStrategy(min_size=spec.actors.min, max_size=spec.actors.max)
    return ray.data.ActorPoolStrategy(size=spec.actors)


@dataclass
class Prepare:
    """A first operator that turns the input table into pipeline rows (e.g. unpacking shards)."""

    fn: Callable[[dict[str, Any]], dict[str, Any]]
    batch_size: int = 16
    num_cpus: float = 1.0


def build_dataset(cfg: IngestConfig, requests: pa.Table, counter: Any, prepare: Prepare | None = None) -> Any:
    """The lazy Ray dataset for ``requests`` under ``cfg`` (nothing runs until it is iterated)."""
    import ray

    specs = list(cfg.stages.items())
    first_batch = prepare.batch_size if prepare else specs[0][1].batch_size
    # many small blocks, so the first stage runs as many parallel tasks as the cluster allows
    blocks = [requests.slice(i, first_batch) for i in range(0, requests.num_rows, first_batch)]
    ds = ray.data.from_arrow(blocks)
    if prepare is not None:
        ds = ds.map_batches(prepare.fn, batch_size=prepare.batch_size, batch_format="numpy",
                            zero_copy_batch=False, num_cpus=prepare.num_cpus)
    for name, spec in specs:
        config = stage_config(name, spec.options)
        remote_args: dict[str, Any] = {"num_cpus": spec.num_cpus}
        if spec.num_gpus:
            remote_args["num_gpus"] = spec.num_gpus
        if spec.actors:
            ds = ds.map_batches(stage_class(name), fn_constructor_args=(config,), batch_size=spec.batch_size,
                                batch_format="numpy", zero_copy_batch=False,
                                compute=actor_pool(spec), **remote_args)
        else:
            ds = ds.map_batches(functools.partial(_run_stage, name, config), batch_size=spec.batch_size,
                                batch_format="numpy", zero_copy_batch=False, **remote_args)
    return ds.map_batches(functools.partial(_commit_batch, cfg.output, counter),
                          batch_size=cfg.shards.samples_per_shard, batch_format="numpy",
                          num_cpus=cfg.shards.num_cpus)


def run_graph(cfg: IngestConfig, requests: pa.Table, first_commit: int,
              on_commit: Callable[[pa.Table], None], prepare: Prepare | None = None) -> None:
    """Run the graph over ``requests``; ``on_commit`` sees each commit's ledger rows as they land.

    Commit numbers start at ``first_commit``.
    """
    import ray

    init_ray(cfg.ray)
    counter = _make_counter(first_commit)
    window = cfg.ray.window_requests
    try:
        # one dataset per window of requests: the object store never holds more than a window
        # of the plan, however long the input is
        for lo in range(0, requests.num_rows, window):
            ds = build_dataset(cfg, requests.slice(lo, window), counter, prepare)
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                if table.num_rows:
                    on_commit(table)
    finally:
        ray.kill(counter)
