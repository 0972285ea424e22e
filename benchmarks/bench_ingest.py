"""The whole ``ingest`` against the bare ffmpeg work it wraps: CPU seconds of each whole process tree.

Both sides turn the same span requests (``--spans`` 5 s spans per source; sources of 10–20 s,
640x360, 25 fps, AAC, generated once and cached) served over HTTP with byte ranges from 127.0.0.1
(``tests/httpserver.py``; 12 distinct files behind as many URLs as the clip count needs, so every
URL is its own source) into the same outputs:

- **ours**: ``vast-pipeline ingest ids.txt --config tiny`` as a user runs it: the embedded Ray
  started for the run, fetch, media, shards, ledger, summary.
- **floor**: a bare loop in one Python process: one plain HTTP GET per source, then per span one
  ffmpeg with the preset's settings (seek, decode, scale, x264 + FLAC), and decord frames only when
  the preset has a stage that consumes frames (the tiny preset has none; ``--floor-frames`` adds
  them anyway, as the issue's first table did). No Ray, no yt-dlp, no probe, no shards.

CPU seconds are those of the whole process tree (user + system of every process that ran: the
driver, Ray's GCS, raylet, agents, workers, every ffmpeg/ffprobe), read from a fresh cgroup each
side starts in (cgroup v2 ``cpu.stat``, or v1 ``cpuacct``; so it needs root): exact, and not
distorted by other load on the machine (wall time is). ``RUSAGE_CHILDREN`` would not do: raylet
reaps its workers without accounting them. This script is the tree's subreaper, so nothing
outlives a run unseen. The HTTP server runs in this process and counts for neither side. A sampler
of /proc attributes ours to driver / Ray daemons / Ray workers (Python) / their children (ffmpeg,
ffprobe: the rest).

Figures per clip count (median of ``--repeat`` interleaved runs): CPU s of each side, ours/floor,
clips per CPU second; start-up = CPU of ours on one clip minus the floor's CPU per clip; the fixed
cost and the marginal cost per clip of ours from the 24- and 96-clip runs (labelled: not the headline);
the driver's peak RSS; and the least the embedded Ray costs, started as ingest starts it (one task; one
Ray Data graph): the bound on start-up while ingest runs on Ray Data.

    .venv/bin/python benchmarks/bench_ingest.py            # 24, 96, 960 clips, 3 runs each (~1 h on 2 cores)
    .venv/bin/python benchmarks/bench_ingest.py --quick    # smoke run: 6 and 24 clips, once
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.httpserver import RangeHTTPServer  # noqa: E402
from tests.mediagen import make_video  # noqa: E402

PRESET = "tiny"
DISTINCT_SOURCES = 12
SPAN_S = 5.0
PR_SET_CHILD_SUBREAPER = 36


# --- the sources and the plan ----------------------------------------------------------------


def make_sources(cache: Path) -> list[tuple[Path, float]]:
    """12 distinct sources of 10–20 s (generated once, kept in ``cache``)."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(DISTINCT_SOURCES):
        seconds = 10.0 + round(10.0 * i / (DISTINCT_SOURCES - 1), 1)
        path = cache / f"src{i:02d}_{seconds:g}s.mp4"
        if not path.exists():
            tmp = path.with_suffix(".tmp.mp4")
            make_video(tmp, seconds=seconds, audio="tone", size="640x360", fps=25)
            tmp.rename(path)
        out.append((path, seconds))
    return out


def write_plan(work: Path, server: RangeHTTPServer, sources: list[tuple[Path, float]], clips: int,
               spans: int | None, urls: int | None = None) -> tuple[Path, list[tuple[str, float, float]]]:
    """``ids.txt`` of ``clips`` span requests over ``urls`` URLs (or ``spans`` per URL), URLs cycling
    over the sources; a URL's spans are spread evenly over its source."""
    served = Path(server.root)
    requests = []
    if urls is not None:
        spans = -(-clips // urls)
    assert spans is not None
    n_urls = -(-clips // spans)
    for u in range(n_urls):
        path, seconds = sources[u % len(sources)]
        name = f"v{u:05d}.mp4"
        if not (served / name).exists():
            try:  # the server refuses symlinks out of its root; a hard link costs no space
                os.link(path, served / name)
            except OSError:
                shutil.copyfile(path, served / name)
        room = seconds - SPAN_S - 1.0  # spans start in [0.5, seconds - 5.5]
        starts = [0.5 + room * k / max(1, spans - 1) for k in range(spans)] if spans > 1 else [1.0]
        for s in starts:
            if len(requests) < clips:
                requests.append((server.url(name), round(s, 3), round(s + SPAN_S, 3)))
    ids = work / f"ids-{clips}.txt"
    ids.write_text("".join(f"{u} {s:g} {e:g}\n" for u, s, e in requests))
    return ids, requests


# --- measuring a process tree ----------------------------------------------------------------


def _procs() -> dict[int, tuple[int, str, float]]:
    """pid → (parent pid, command name, CPU s so far) of every process, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15
        out[int(d.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _descendants(root: int, procs: dict[int, tuple[int, str, float]]) -> list[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


class TreeSampler(threading.Thread):
    """Samples the CPU times of every process under ``pid``: who used what, and the driver's peak RSS."""

    def __init__(self, pid: int, period_s: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.period_s = pid, period_s
        self.last: dict[int, tuple[str, float]] = {}
        self.driver_hwm_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            procs = _procs()
            for pid in [self.pid, *_descendants(self.pid, procs)]:
                if pid not in procs:
                    continue
                kind = self.last[pid][0] if pid in self.last else _kind(pid, procs[pid][1], self.pid)
                self.last[pid] = (kind, procs[pid][2])
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.driver_hwm_kb = max(self.driver_hwm_kb, int(line.split()[1]))
            except OSError:
                pass
            self.stop.wait(self.period_s)

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, cpu in self.last.values():
            out[kind] = out.get(kind, 0.0) + cpu
        return out


def _kind(pid: int, name: str, driver: int) -> str:
    if pid == driver:
        return "driver"
    if name in ("ffmpeg", "ffprobe"):
        return "ffmpeg"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = ""
    if "default_worker.py" in cmd or name.startswith("ray::") or cmd.startswith("ray::"):
        return "ray workers"
    return "ray daemons"


class CpuCgroup:
    """A fresh cgroup for one process tree: its CPU usage includes every process that ever ran in it."""

    def __init__(self) -> None:
        v2 = Path("/sys/fs/cgroup")
        for base, kind in ((v2, 2), (v2 / "unified", 2), (v2 / "cpuacct", 1)):
            if kind == 2 and not (base / "cgroup.procs").exists() or kind == 1 and not base.is_dir():
                continue
            path = base / f"vast-bench-{os.getpid()}-{time.monotonic_ns()}"
            try:
                path.mkdir()
            except OSError:
                continue
            self.path, self.kind = path, kind
            return
        sys.exit("bench_ingest needs a cgroup it can create (run as root): the CPU of Ray's whole process "
                 "tree cannot be measured otherwise (raylet reaps its workers without accounting them)")

    def enter(self) -> None:
        """Called in the child before exec: the tree starts inside the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def cpu_s(self) -> float:
        if self.kind == 2:
            stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        return int((self.path / "cpuacct.usage").read_text()) / 1e9

    def close(self, grace_s: float = 20.0) -> float:
        """Wait for the tree's last process (killing stragglers after ``grace_s``), remove the cgroup;
        returns the CPU seconds of everything that ran in it."""
        deadline = time.time() + grace_s
        while pids := [int(p) for p in (self.path / "cgroup.procs").read_text().split()]:
            if time.time() > deadline:
                for pid in pids:
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
            _reap()
            time.sleep(0.05)
        _reap()
        cpu = self.cpu_s()
        self.path.rmdir()
        return cpu


def _reap() -> None:
    """Reap exited descendants (as subreaper, orphans of the measured tree are ours to wait for)."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def measure(cmd: list[str], env: dict[str, str] | None = None, sample: bool = False) -> dict[str, Any]:
    """Run ``cmd`` to completion; CPU s of its whole tree, wall s, and (sampled) who used what."""
    group = CpuCgroup()
    wall0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=group.enter)
    sampler = TreeSampler(proc.pid) if sample else None
    if sampler:
        sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - wall0
    if sampler:
        sampler.stop.set()
        sampler.join()
    cpu = group.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")
    result: dict[str, Any] = {"cpu": cpu, "wall": wall, "load": (load0 + os.getloadavg()[0]) / 2,
                              "output": out.decode(errors="replace")}
    if sampler:
        kinds = sampler.by_kind()
        kinds["ffmpeg"] = max(0.0, cpu - sum(v for k, v in kinds.items() if k != "ffmpeg"))
        result["kinds"] = kinds
        result["driver_hwm_mb"] = sampler.driver_hwm_kb / 1024
    return result


# --- the two sides ---------------------------------------------------------------------------


def run_ours(ids: Path, output: Path, extra: list[str], attempts: int = 3) -> dict[str, Any]:
    cmd = [str(Path(sys.executable).parent / "vast-pipeline"), "ingest", str(ids), "--config", PRESET,
           "--output", str(output), "--no-progress", *extra]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for attempt in range(attempts):
        shutil.rmtree(output, ignore_errors=True)
        try:
            res = measure(cmd, env, sample=True)
            break
        except RuntimeError as e:
            # on a shared machine Ray's memory monitor may kill a worker of ours when others fill
            # the memory: that run measures nothing, so it is run again from scratch
            last = str(e).strip().splitlines()
            print(f"  (a run of ours failed, {'retrying' if attempt + 1 < attempts else 'giving up'}: "
                  f"{last[-1][:200] if last else e})", flush=True)
            if attempt + 1 == attempts:
                raise
    summary = json.loads((output / "summary.json").read_text())
    res["summary"] = summary
    res["ok"] = summary["clips"]["ok"]
    res["mp4_bytes"] = _mp4_bytes(output)
    return res


def _mp4_bytes(output: Path) -> int:
    import pyarrow.parquet as pq

    files = sorted(output.glob("shard-*.parquet"))
    return int(sum(pq.read_table(f, columns=["mp4_bytes"])["mp4_bytes"].to_numpy().sum() for f in files))


def run_floor(ids: Path, work: Path, frames: bool) -> dict[str, Any]:
    out = work / "floor"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--floor-loop", str(ids), str(out)]
    cmd += ["--floor-frames"] if frames else []
    res = measure(cmd)
    stats = json.loads((out / "stats.json").read_text())
    res.update(stats)
    return res


def floor_loop(ids: Path, out: Path, frames: bool) -> None:
    """The bare per-clip work: GET each source once, one ffmpeg per span (+ decord frames)."""
    from vast.pipeline.config import load_config
    from vast.pipeline.media import MediaConfig

    spec = load_config(PRESET).stages["media"]
    c = MediaConfig(**spec.options)
    out.mkdir(parents=True)
    by_url: dict[str, list[tuple[float, float]]] = {}
    for line in ids.read_text().splitlines():
        url, s, e = line.split()
        by_url.setdefault(url, []).append((float(s), float(e)))

    def one_source(item: tuple[int, tuple[str, list[tuple[float, float]]]]) -> tuple[int, int]:
        i, (url, spans) = item
        src = out / f"src{i}.mp4"
        with urllib.request.urlopen(url) as r, open(src, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        n = nbytes = 0
        for k, (s, e) in enumerate(spans):
            mp4, flac = out / f"c{i}_{k}.mp4", out / f"c{i}_{k}.flac"
            t = str(c.threads)
            subprocess.run(
                ["ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", "-threads", t,
                 "-ss", f"{s:.3f}", "-t", f"{e - s:.3f}", "-i", str(src), "-filter_threads", t,
                 "-map", "0:v:0", "-vf", f"scale=-2:{c.max_height}", "-c:v", "libx264", "-preset", c.preset,
                 "-crf", str(c.crf), "-pix_fmt", "yuv420p", "-g", str(round(c.gop_s * 25)), "-threads", t,
                 "-movflags", "+faststart", "-map_metadata", "-1", str(mp4),
                 "-map", "0:a:0", "-ac", "1", "-ar", str(c.audio_rate), "-c:a", "flac", "-map_metadata", "-1",
                 str(flac)], check=True, capture_output=True)
            if frames:
                import decord

                vr = decord.VideoReader(str(mp4), width=c.frame_size, height=c.frame_size,
                                        num_threads=c.threads)
                m = len(vr)
                vr.get_batch([min(m - 1, int((j + 0.5) * m / c.num_frames)) for j in range(c.num_frames)])
            nbytes += mp4.stat().st_size
            n += 1
        return n, nbytes

    # two at a time, like the two cores ours gets; CPU seconds do not depend on it
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(one_source, enumerate(by_url.items())))
    (out / "stats.json").write_text(json.dumps({"ok": sum(n for n, _ in done),
                                                "mp4_bytes": sum(b for _, b in done)}))


# The least any run on the embedded Ray costs here, started as ingest starts it (init_ray): the bare
# cluster (one task), and the least Ray Data graph (one map over four rows).
RAY_MINIMUM = """
import ray, sys
sys.path.insert(0, {root!r})
from vast.pipeline.config import RayOptions
from vast.pipeline.graph import init_ray
init_ray(RayOptions(num_cpus=2, object_store_mb=300))
if {data!r}:
    ds = ray.data.from_items([{{"x": i}} for i in range(4)]).map_batches(lambda b: b, batch_size=1)
    assert sum(len(b["x"]) for b in ds.iter_batches(batch_size=None)) == 4
else:
    assert ray.get(ray.remote(lambda: 1).remote()) == 1
ray.shutdown()
"""


# --- the report ------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", default="24,96,960", help="comma-separated clip counts")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per clip count (median reported)")
    ap.add_argument("--urls", type=int, default=DISTINCT_SOURCES,
                    help="distinct source URLs the clips are spread over (the issue's layout: 12)")
    ap.add_argument("--spans", type=int, help="instead of --urls: this many 5 s spans per URL, as many URLs "
                                              "as the clip count needs (e.g. 2: twice as many downloads)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 and 24 clips, once")
    ap.add_argument("--floor-frames", action="store_true",
                    help="the floor also decodes frames with decord (the issue's first table did)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vast-bench-ingest",
                    help="where the generated sources are kept between runs")
    ap.add_argument("--json", type=Path, help="also write every figure to this file")
    ap.add_argument("--floor-loop", nargs=2, type=Path, help=argparse.SUPPRESS)
    ap.add_argument("extra", nargs="*", help="extra `ingest` overrides for ours, after --")
    args = ap.parse_args()
    if args.floor_loop:
        floor_loop(*args.floor_loop, args.floor_frames)
        return
    if args.quick:
        args.clips, args.repeat = "6,24", 1
    counts = sorted({int(c) for c in args.clips.split(",")})

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("cannot become a child subreaper: the tree's CPU could not be measured")
    sources = make_sources(args.cache)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start; preset {PRESET}; "
          f"{DISTINCT_SOURCES} distinct 640x360 sources of 10–20 s; {SPAN_S:g} s spans, "
          + (f"{args.spans} per URL; " if args.spans else f"over {args.urls} URLs; ") +
          f"CPU s = the whole process tree (user+sys); median of {args.repeat}", flush=True)

    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory(prefix="vast-bench-ingest-") as tmp:
        work = Path(tmp)
        (work / "served").mkdir()
        with RangeHTTPServer(work / "served") as server:
            one_ids, _ = write_plan(work, server, sources, 1, 1)
            startup = [run_ours(one_ids, work / "out", args.extra) for _ in range(args.repeat)]
            ray_minimum = {data: [measure([sys.executable, "-c", RAY_MINIMUM.format(root=str(ROOT),
                                                                                    data=data)])["cpu"]
                                  for _ in range(args.repeat)] for data in (False, True)}
            for n in counts:
                ids, _ = write_plan(work, server, sources, n, args.spans, None if args.spans else args.urls)
                results[n] = {"ours": [], "floor": []}
                for r in range(args.repeat):
                    ours = run_ours(ids, work / "out", args.extra)
                    floor = run_floor(ids, work, args.floor_frames)
                    assert ours["ok"] == n and floor["ok"] == n, (ours["ok"], floor["ok"], n)
                    results[n]["ours"].append(ours)
                    results[n]["floor"].append(floor)
                    print(f"  {n:4d} clips run {r + 1}: ours {ours['cpu']:7.1f} CPU s "
                          f"{ours['wall']:6.1f} wall s | floor {floor['cpu']:7.1f} CPU s "
                          f"{floor['wall']:6.1f} wall s | load "
                          f"{ours['load']:.1f}/{floor['load']:.1f}", flush=True)

    med = statistics.median
    floor_per_clip = {n: med(f["cpu"] for f in results[n]["floor"]) / n for n in counts}
    startup_cpu = med(s["cpu"] for s in startup) - floor_per_clip[counts[0]]
    print()
    print(f"{'clips':>6} {'ours CPU s':>10} {'floor CPU s':>11} {'ours/floor':>10} {'ours clips/CPU s':>16} "
          f"{'floor clips/CPU s':>17} {'ours wall s':>11} {'driver peak MiB':>15} "
          f"{'mp4 bytes ours/floor':>20}")
    table = []
    for n in counts:
        o, f = results[n]["ours"], results[n]["floor"]
        row = {"clips": n, "ours_cpu": med(x["cpu"] for x in o), "floor_cpu": med(x["cpu"] for x in f),
               "ours_wall": med(x["wall"] for x in o), "floor_wall": med(x["wall"] for x in f),
               "driver_peak_mb": med(x["driver_hwm_mb"] for x in o),
               "mp4_ratio": med(x["mp4_bytes"] for x in o) / med(x["mp4_bytes"] for x in f),
               "load": med(x["load"] for x in o + f),
               "kinds": {k: med(x["kinds"].get(k, 0.0) for x in o) for k in o[0]["kinds"]},
               "stages": o[len(o) // 2]["summary"].get("run", {}).get("stages")}
        row["ratio"] = row["ours_cpu"] / row["floor_cpu"]
        table.append(row)
        print(f"{n:6d} {row['ours_cpu']:10.1f} {row['floor_cpu']:11.1f} {row['ratio']:10.2f} "
              f"{n / row['ours_cpu']:16.3f} {n / row['floor_cpu']:17.3f} {row['ours_wall']:11.1f} "
              f"{row['driver_peak_mb']:15.0f} {row['mp4_ratio']:20.3f}")
    print()
    for row in table:
        kinds = "  ".join(f"{k} {v:.1f}" for k, v in sorted(row["kinds"].items(), key=lambda kv: -kv[1]))
        print(f"where ours goes at {row['clips']} clips (CPU s): {kinds}")
    print(f"start-up: {startup_cpu:.1f} CPU s (ours on 1 clip, {med(s['cpu'] for s in startup):.1f} CPU s, "
          f"minus the floor's {floor_per_clip[counts[0]]:.2f} CPU s per clip); the least the embedded Ray "
          f"costs here (started as ingest starts it): {med(ray_minimum[False]):.1f} CPU s for one task, "
          f"{med(ray_minimum[True]):.1f} CPU s for a Ray Data graph (a 4-row map)")
    if len(counts) >= 2:
        # the marginal cost per clip between consecutive clip counts: the steady state, fixed costs out
        for a, b in zip(table, table[1:], strict=False):
            marginal = (b["ours_cpu"] - a["ours_cpu"]) / (b["clips"] - a["clips"])
            floor_marginal = (b["floor_cpu"] - a["floor_cpu"]) / (b["clips"] - a["clips"])
            fixed = a["ours_cpu"] - a["clips"] * marginal
            print(f"steady state, marginal, not the headline ({a['clips']} → {b['clips']} clips): "
                  f"ours {marginal:.3f} CPU s per clip "
                  f"({1 / marginal:.2f} clips per CPU s), floor {floor_marginal:.3f} → "
                  f"{marginal / floor_marginal:.2f}x; fixed cost of ours {fixed:.1f} CPU s")
        last, prev = table[-1], table[-2]
        print(f"scale: clips per CPU s at {last['clips']} vs {prev['clips']}: "
              f"{(last['clips'] / last['ours_cpu']) / (prev['clips'] / prev['ours_cpu']):.3f}x; driver peak "
              + ", ".join(f"{r['driver_peak_mb']:.0f} MiB at {r['clips']}" for r in table))
    print(f"load average over the runs (median): {med(r['load'] for r in table):.2f} "
          f"on {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps({"startup_cpu": startup_cpu,
                                         "ray_minimum_cpu": med(ray_minimum[False]),
                                         "ray_data_minimum_cpu": med(ray_minimum[True]),
                                         "table": table}, indent=2, default=str))


if __name__ == "__main__":
    main()
