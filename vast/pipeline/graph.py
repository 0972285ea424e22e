"""The one streaming Ray Data graph: requests → configured stages → committed shards.

The graph is built from the config's ordered ``stages`` mapping: each name is looked up in the
stage registry (``vast.pipeline.stage.STAGES``), so a new stage plugs in by registering it and
naming it in a preset — this file does not change. Stages without ``actors`` run as Ray tasks;
consecutive ones of them (fetch → media) run as one task in one worker process (a ``StageChain``),
so that fetch hands media a file on local disk instead of its bytes through the object store, and
worker processes stay as few as the cores (each keeps its stage instances, e.g. one ``YoutubeDL``).
Stages with ``actors: N`` run on a pool of N actors that construct the stage (and load its model)
once. Requests are cut into blocks by source, so that the spans of one video share one download.
The last operator (Ray tasks) commits each batch of ``shards.samples_per_shard`` rows as one shard
and sends only the small ledger rows (and each stage's CPU and busy time) back to the driver, so
memory stays bounded by the pipeline's width, not the input's length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from vast.pipeline.config import ActorPool, IngestConfig, RayOptions, StageSpec
from vast.pipeline.scratch import scratch_dir
from vast.pipeline.stage import batch_len, rows_of, stage_class, stage_config

# Column carrying each stage's time records ([stage, start, end, cpu_s, slots], JSON) from the
# workers to the driver: on the first row a batch produced, "" on the others.
TIMES = "stage_times"


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
        _single_machine_ray()
        # "local": always a new embedded cluster, never one that happens to run on this machine
        # no log monitor publishes worker prints here (_only_needed_daemons): nothing to subscribe to
        common["log_to_driver"] = False
        with _only_needed_daemons():
            ray.init(address="local", num_cpus=opts.num_cpus,
                     object_store_memory=opts.object_store_mb * 2**20, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **common)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


@contextlib.contextmanager
def _only_needed_daemons() -> Iterator[None]:
    """While the embedded Ray starts: no autoscaler monitor and no log monitor.

    ``ray.init`` starts both on every new cluster and offers no switch for them (its ``RayParams``
    has ``no_monitor`` and ``include_log_monitor``; ``ray start`` exposes them). The embedded Ray
    has one node that never scales, so the monitor has nothing to do; the log monitor tails every
    worker's log file to echo it on the driver, and the pipeline's failures reach the driver as
    task errors and ledger rows, not as worker prints (those stay in Ray's session logs). Together
    they cost ~1 CPU s to start and more for every second the run lasts
    (``benchmarks/bench_ingest.py``). A cluster the user gives (``ray.address``) is never touched.
    """
    from ray._private.parameter import RayParams

    original = RayParams.__init__

    def without_monitors(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.no_monitor = True
        self.include_log_monitor = False

    RayParams.__init__ = without_monitors  # type: ignore[method-assign]
    try:
        yield
    finally:
        RayParams.__init__ = original  # type: ignore[method-assign]


def _single_machine_ray() -> None:
    """Put the embedded Ray in its single-machine mode, where every service listens on 127.0.0.1.

    A loopback node address alone leaves Ray's GCS, raylet and agents listening on all interfaces
    (Ray 2.60, Linux). Ray's single-machine mode binds them to loopback: its services read the
    environment variable, and this driver (which starts them) reads the constant Ray took from it at
    import. No other node can join such a cluster, which is the point of the embedded default.
    """
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _make_counter(start: int, owners: dict[str, tuple[str, str, bool]] | None) -> Any:
    import ray

    from vast.shards.ledger import ClipOwners

    @ray.remote(num_cpus=0)
    class CommitCounter:
        """Hands out commit numbers and settles clip-key owners (``ClipOwners``) for the whole run;
        the same batch (by content) always gets the same number and the same verdicts."""

        def __init__(self, start: int, owners: dict[str, tuple[str, str, bool]] | None):
            self.next = start
            self.numbers: dict[str, tuple[int, list[tuple[str, str]]]] = {}
            self.owners = ClipOwners(owners)

        def number(self, digest: str,
                   rows: list[tuple[str, str, str, str]]) -> tuple[int, list[tuple[str, str]]]:
            if digest not in self.numbers:
                self.numbers[digest] = (self.next, self.owners.verdicts(rows))
                self.next += 1
            return self.numbers[digest]

    return CommitCounter.remote(start, owners)


class _Meter:
    """Wall and CPU time of one stage call in a worker: the CPU of the calling thread (or of the whole
    process, for an actor that runs nothing else but may compute on threads of its own) plus that of
    the tools (ffmpeg, ffprobe) it waited for. Ray's own threads in a task worker are left out."""

    def __init__(self, whole_process: bool = False) -> None:
        self.whole_process = whole_process
        self.start, self.cpu = time.time(), self._cpu_s()

    def _cpu_s(self) -> float:
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        own = time.process_time() if self.whole_process else time.thread_time()
        return own + kids.ru_utime + kids.ru_stime

    def record(self, name: str, slots: float) -> list[Any]:
        return [name, round(self.start, 3), round(time.time(), 3), round(self._cpu_s() - self.cpu, 4), slots]


def _with_times(batch: dict[str, Any], records: list[list[Any]]) -> dict[str, Any]:
    """``batch`` with this call's time records added to those it arrived with (on its first row)."""
    import numpy as np

    n = batch_len(batch)
    column = np.full(n, "", dtype=object)
    carried = [r for v in batch.get(TIMES, []) if v for r in json.loads(v)]
    if n:
        column[0] = json.dumps(carried + records)
    return {**batch, TIMES: column}


class StageChain:
    """Consecutive task stages run in one call, in one worker, on one batch.

    A stage with ``fetch_local`` (fetch) leaves its files in a folder of this call and hands the
    next stage their paths; the folder is removed when the chain is done with the batch.
    """

    def __init__(self, stages: list[tuple[str, Any]], slots: float):
        self.stages = [(name, stage_class(name)(config)) for name, config in stages]
        self.slots = slots
        # the fetch stage's work_dir, where it has one; else the system's temporary folder
        self.work_dir = next((c.work_dir for _, c in stages if getattr(c, "work_dir", None)), None)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        records = []
        folder = Path(tempfile.mkdtemp(prefix="vast-chain-", dir=scratch_dir(self.work_dir)))
        try:
            for i, (name, stage) in enumerate(self.stages):
                meter = _Meter()
                local = i + 1 < len(self.stages) and hasattr(stage, "fetch_local")
                batch = stage.fetch_local(batch, folder) if local else stage(batch)
                records.append(meter.record(name, self.slots))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return _with_times(batch, records)


def _run_chain(stages: list[tuple[str, Any]], slots: float, batch: dict[str, Any]) -> dict[str, Any]:
    return _chain_instance(stages, slots)(batch)


_CHAIN_CACHE: dict[str, StageChain] = {}


def _chain_instance(stages: list[tuple[str, Any]], slots: float) -> StageChain:
    # a worker process keeps its stages between tasks: built once, e.g. one YoutubeDL per worker
    key = repr((stages, slots))
    if key not in _CHAIN_CACHE:
        _CHAIN_CACHE[key] = StageChain(stages, slots)
    return _CHAIN_CACHE[key]


class TimedStage:
    """An actor stage (a model loaded once per actor) whose calls are timed like a chain's."""

    def __init__(self, name: str, config: Any, slots: float):
        self.name, self.slots = name, slots
        self.stage = stage_class(name)(config)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        meter = _Meter(whole_process=True)
        out = self.stage(batch)
        return _with_times(out, [meter.record(self.name, self.slots)])


def _commit_batch(output: str, counter: Any, slots: float, batch: dict[str, Any]) -> pa.Table:
    """The graph's sink: one call, one commit; a retried task gets the same commit number."""
    import ray

    from vast.shards.ledger import apply_verdicts
    from vast.shards.writer import ShardWriter

    meter = _Meter()
    rows = rows_of(batch)
    digest = hashlib.sha1("\n".join(sorted(f"{r['key']}|{r['input']}|{r['status']}" for r in rows))
                          .encode()).hexdigest()
    claims = [(r["key"], r["request"], r["input"], r["status"]) for r in rows]
    number, verdicts = ray.get(counter.number.remote(digest, claims))
    table = ShardWriter(output).commit(apply_verdicts(rows, verdicts), number)
    times = _with_times({TIMES: batch.get(TIMES, [])}, [meter.record("commit", slots)])[TIMES]
    # the ledger has a row per clip, the batch one per row: the records ride on the first of either
    column = [times[0] if len(times) else ""] + [""] * (table.num_rows - 1) if table.num_rows else []
    return table.append_column(TIMES, pa.array(column, pa.string()))


def _operators(specs: list[tuple[str, StageSpec]]) -> list[list[tuple[str, StageSpec]]]:
    """The stages grouped into Ray operators: runs of task stages without GPUs become one chain."""
    ops: list[list[tuple[str, StageSpec]]] = []
    for name, spec in specs:
        chainable = not spec.actors and not spec.num_gpus
        if ops and chainable and not ops[-1][0][1].actors and not ops[-1][0][1].num_gpus:
            ops[-1].append((name, spec))
        else:
            ops.append([(name, spec)])
    return ops


def _frames_consumed(names: list[str]) -> bool:
    return any("frames" in getattr(stage_class(n), "needs", ()) for n in names)


def _blocks_by_source(requests: pa.Table, rows_per_block: int) -> list[pa.Table]:
    """Blocks of about ``rows_per_block`` requests that never split one source's requests, so that a
    video's spans meet in one call of the first stage (one download, one probe)."""
    if not requests.num_rows:
        return []
    if "source" not in requests.column_names:
        return [requests.slice(i, rows_per_block) for i in range(0, requests.num_rows, rows_per_block)]
    # a source's requests move up to its first one; otherwise the input order is kept
    sources = requests["source"].to_pylist()
    first: dict[str, int] = {}
    for i, source in enumerate(sources):
        first.setdefault(source, i)
    order = sorted(range(len(sources)), key=lambda i: first[sources[i]])  # stable
    requests = requests.take(order)
    sources = [sources[i] for i in order]
    blocks, lo = [], 0
    for i in range(1, len(sources) + 1):
        if i == len(sources) or (i - lo >= rows_per_block and sources[i] != sources[i - 1]):
            blocks.append(requests.slice(lo, i - lo))
            lo = i
    return blocks


def actor_pool(spec: StageSpec) -> Any:
    """The Ray Data compute strategy of an actor stage: a fixed pool of ``actors: N`` or an
    autoscaling pool of ``actors: {min, max}``."""
    import ray

    if isinstance(spec.actors, ActorPool):
        return ray.data.ActorPoolStrategy(min_size=spec.actors.min, max_size=spec.actors.max)
    return ray.data.ActorPoolStrategy(size=spec.actors)


def _pool_slots(spec: StageSpec) -> float:
    """How many actors of the stage can work at once (the most an autoscaling pool grows to)."""
    return float(spec.actors.max if isinstance(spec.actors, ActorPool) else spec.actors)


@dataclass
class Prepare:
    """A first operator that turns the input table into pipeline rows (e.g. unpacking shards)."""

    fn: Callable[[dict[str, Any]], dict[str, Any]]
    batch_size: int = 16
    num_cpus: float = 1.0


def build_dataset(cfg: IngestConfig, requests: pa.Table, counter: Any, prepare: Prepare | None = None,
                  scratch: str | None = None) -> Any:
    """The lazy Ray dataset for ``requests`` under ``cfg`` (nothing runs until it is iterated); stages with
    a ``work_dir`` keep their temporary files in ``scratch``, the run's folder (``vast.pipeline.scratch``)."""
    import ray

    specs = list(cfg.stages.items())
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    first_batch = prepare.batch_size if prepare else specs[0][1].batch_size
    # many small blocks, so the first stage runs as many parallel tasks as the cluster allows
    if prepare is None:
        ds = ray.data.from_arrow(_blocks_by_source(requests, first_batch) or [requests])
    else:
        ds = ray.data.from_arrow([requests.slice(i, first_batch)
                                  for i in range(0, requests.num_rows, first_batch)] or [requests])
        ds = ds.map_batches(prepare.fn, batch_size=prepare.batch_size, batch_format="numpy",
                            zero_copy_batch=False, num_cpus=prepare.num_cpus)
    names = [name for name, _ in specs]
    for k, op in enumerate(_operators(specs)):
        configs = []
        for name, spec in op:
            config = stage_config(name, spec.options)
            if name == "media" and getattr(config, "frames", True) is None:
                # decode frames only when a later stage consumes them
                later = names[names.index(name) + 1:]
                config = dataclasses.replace(config, frames=_frames_consumed(later))
            if scratch and "work_dir" in {f.name for f in dataclasses.fields(config)}:
                config = dataclasses.replace(config, work_dir=scratch)
            configs.append((name, config))
        name, spec = op[0]
        if spec.actors:
            remote_args: dict[str, Any] = {"num_cpus": spec.num_cpus}
            if spec.num_gpus:
                remote_args["num_gpus"] = spec.num_gpus
            ds = ds.map_batches(TimedStage, fn_constructor_args=(name, configs[0][1], _pool_slots(spec)),
                                batch_size=spec.batch_size, batch_format="numpy", zero_copy_batch=False,
                                compute=actor_pool(spec), **remote_args)
        else:
            # a chain reserves what its most demanding stage asks for; the first operator takes the
            # blocks as cut (a source's requests together), later ones their first stage's batch size
            num_cpus = max(s.num_cpus for _, s in op)
            batch_size = None if k == 0 and prepare is None else spec.batch_size
            ds = ds.map_batches(functools.partial(_run_chain, configs, max(1.0, cpus // num_cpus)),
                                batch_size=batch_size, batch_format="numpy", zero_copy_batch=False,
                                num_cpus=num_cpus)
    commit_slots = max(1.0, cpus // cfg.shards.num_cpus)
    return ds.map_batches(functools.partial(_commit_batch, cfg.output, counter, commit_slots),
                          batch_size=cfg.shards.samples_per_shard, batch_format="numpy",
                          num_cpus=cfg.shards.num_cpus)


def run_graph(cfg: IngestConfig, requests: pa.Table, first_commit: int,
              on_commit: Callable[[pa.Table], None], prepare: Prepare | None = None,
              owners: dict[str, tuple[str, str, bool]] | None = None, scratch: str | None = None) -> None:
    """Run the graph over ``requests``; ``on_commit`` sees each commit's ledger rows as they land.

    Commit numbers start at ``first_commit``; ``owners`` seeds the clip keys already owned
    (``vast.shards.ledger.ClipOwners``); ``scratch`` is the run's folder for temporary files.
    """
    if requests.num_rows == 0:  # a rerun of a finished job, an empty retry: no cluster to start
        return
    import ray
    from ray.data.block import BlockAccessor

    init_ray(cfg.ray)
    counter = _make_counter(first_commit, owners)
    window = cfg.ray.window_requests
    try:
        # one dataset per window of requests: the object store never holds more than a window
        # of the plan, however long the input is
        for lo in range(0, requests.num_rows, window):
            ds = build_dataset(cfg, requests.slice(lo, window), counter, prepare, scratch)
            # the sink's blocks as they are (small ledger tables): no batching, formatting or
            # prefetching threads in the driver, which only waits for the next commit
            for bundle in ds.iter_internal_ref_bundles():
                for ref in bundle.block_refs:
                    table = BlockAccessor.for_block(ray.get(ref)).to_arrow()
                    if table.num_rows:
                        on_commit(table)
    finally:
        ray.kill(counter)
