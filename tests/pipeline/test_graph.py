"""How the graph is cut into Ray operators and blocks, and what a fetch+media worker loads."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa

from vast.pipeline.config import StageSpec
from vast.pipeline.graph import _blocks_by_source, _frames_consumed, _operators


def test_consecutive_task_stages_run_as_one_chain():
    specs = [("fetch", StageSpec(num_cpus=0.25)), ("media", StageSpec()),
             ("vision_caption", StageSpec(actors=1)), ("subtitle", StageSpec(actors=1, num_gpus=0.5))]
    assert [[name for name, _ in op] for op in _operators(specs)] == \
        [["fetch", "media"], ["vision_caption"], ["subtitle"]]
    assert _frames_consumed(["vision_caption"]) and not _frames_consumed(["subtitle", "fusion"])


def test_blocks_never_split_the_requests_of_one_source():
    sources = ["a", "b", "a", "c", "b", "a", "d", "e"]
    table = pa.table({"request": [f"r{i}" for i in range(len(sources))], "source": sources})
    blocks = _blocks_by_source(table, 2)
    assert sum(b.num_rows for b in blocks) == len(sources)
    where = {}
    for i, block in enumerate(blocks):
        for s in block["source"].to_pylist():
            where.setdefault(s, set()).add(i)
    assert all(len(v) == 1 for v in where.values())  # every source in exactly one block
    assert max(b.num_rows for b in blocks) == 3  # a's three spans stay together
    # otherwise the input order holds: each source where its first request was
    assert [s for b in blocks for s in b["source"].to_pylist()] == ["a", "a", "a", "b", "b", "c", "d", "e"]


def test_a_fetch_and_media_worker_loads_no_model_library(tmp_path):
    """The tiny chain (fetch → media, no frame consumer) cuts a local file without importing torch,
    transformers, whisper, yt-dlp or decord: a worker pays only for what it runs."""
    from tests.mediagen import make_video

    video = make_video(tmp_path / "v.mp4", seconds=3.0)
    code = f"""
import json, sys
from vast.pipeline.config import load_config
from vast.pipeline.graph import StageChain
from vast.pipeline.stage import LEDGER_COLUMNS, batch_of, rows_of, stage_config
import dataclasses
cfg = load_config("tiny")
stages = [(n, stage_config(n, s.options)) for n, s in cfg.stages.items()]
stages = [(n, dataclasses.replace(c, frames=False) if n == "media" else c) for n, c in stages]
row = dict.fromkeys(LEDGER_COLUMNS, "")
row.update(request="r", key="r", source={str(video)!r}, video_id="v", start=0.5, end=2.5, skip_keys=[],
           n_clips=1, status="ok", meta="{{}}")
out = rows_of(StageChain(stages, 2.0)(batch_of([row])))
heavy = [m for m in ("torch", "transformers", "whisper", "yt_dlp", "decord") if m in sys.modules]
print(json.dumps({{"status": out[0]["status"], "message": out[0]["message"], "heavy": heavy,
                  "times": json.loads(out[0]["stage_times"])}}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["status"] == "ok", got["message"]
    assert got["heavy"] == []
    assert [t[0] for t in got["times"]] == ["fetch", "media"] and got["times"][1][3] > 0


def test_the_embedded_ray_listens_on_loopback_only_and_starts_only_the_daemons_it_needs(tmp_path):
    """Services bound to loopback by default: every socket the embedded Ray's processes listen on. And
    of Ray's daemons only those a one-node run needs: no autoscaler monitor, no log monitor."""
    script = """
import json, os, psutil, ray
from vast.pipeline.config import RayOptions
from vast.pipeline.graph import init_ray
init_ray(RayOptions(num_cpus=1, object_store_mb=128))
ray.get(ray.remote(lambda: 1).remote())  # a worker and its sockets too
me = psutil.Process()
kids = me.children(recursive=True)
pids = {p.pid for p in kids} | {me.pid}
print(json.dumps({"addresses": sorted({c.laddr.ip for c in psutil.net_connections("inet")
                                       if c.status == psutil.CONN_LISTEN and c.pid in pids}),
                  "programs": sorted({os.path.basename(a) for p in kids for a in p.cmdline()
                                      if a == p.cmdline()[0] or a.endswith(".py")})}))
ray.shutdown()
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         timeout=300)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    addresses = set(got["addresses"])
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, addresses
    programs = set(got["programs"])
    assert {"gcs_server", "raylet", "dashboard.py"} <= programs, programs
    assert not programs & {"monitor.py", "log_monitor.py"}, programs
