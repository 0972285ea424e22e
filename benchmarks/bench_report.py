"""``vast-pipeline report`` at scale: an output of 1,000,000 synthetic clips in 1,000 commits.

The output is written in the real formats: parquet manifests (``MANIFEST_SCHEMA``: three vision
and three audio captions, a subtitle, an omni-caption and provenance records per sample, as the
stages write them) and ledger parts (``LEDGER_SCHEMA``, 5 % extra failed rows with messages),
through ``OutputStore.write_parquet``. The tars the gallery samples are real (json + a real mp4
and flac per sample, every sample of those shards); every other tar is a sparse file of its
ledger size, since the report only lists their sizes and never opens them.

Each measurement runs in a fresh process and prints wall seconds, CPU seconds and that process's
peak RSS: first ``summarize`` (what ``vast-pipeline status`` computes; the baseline), then
``write_report`` (figures + gallery + page).

    python benchmarks/bench_report.py --rows 1000000
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import resource
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from vast.report.gallery import sample_rows
from vast.report.stats import LEDGER_COLUMNS
from vast.shards.ledger import LEDGER_SCHEMA, read_ledger
from vast.shards.schema import MANIFEST_SCHEMA
from vast.shards.store import OutputStore

WORDS = ("a man woman child dog car street room kitchen music guitar drum piano speaks talks sings walks "
         "runs plays holds opens red blue green small large bright dark slowly quickly outside inside "
         "while the of on in with at video audio sound noise crowd applause laughter water wind").split()
CLASSES = ("unavailable", "private", "network", "rate_limited", "decode_error", "too_long")


def pool(rng: np.random.Generator, n: int, lo: int, hi: int) -> pa.Array:
    """``n`` distinct-ish captions of ``lo``–``hi`` words."""
    return pa.array([" ".join(rng.choice(WORDS, rng.integers(lo, hi + 1))) for _ in range(n)])


def provenance() -> str:
    """One record per generated field, shaped like the stages' (model, sha256, decoding, prompt)."""
    def rec(model: str, prompt: dict | None = None) -> dict:
        r = {"model": model, "weights_sha256": "ab" * 32, "decoding": {"top_k": 10, "num_captions": 3}}
        return {**r, "prompt": prompt} if prompt else r
    sub = rec("models/faster-whisper-large-v3")
    fusion = rec("models/vicuna-13b-v1.5", {"name": "vast27m-v1", "version": 1, "sha256": "cd" * 32})
    return json.dumps({"vision_cap": rec("models/vast/vision_captioner"),
                       "audio_cap": rec("models/vast/audio_captioner"), "subtitle": sub,
                       "subtitle_language": sub, "subtitle_segments": sub, "vast_cap": fusion})


def write_output(root: Path, rows: int, per_commit: int, seed: int = 0) -> OutputStore:
    rng = np.random.default_rng(seed)
    store = OutputStore(str(root))
    short, long_, subs = pool(rng, 4000, 8, 20), pool(rng, 4000, 15, 40), pool(rng, 4000, 5, 30)
    prov = provenance()
    t0 = time.time() - 3600
    for c, lo in enumerate(range(0, rows, per_commit)):
        m = min(per_commit, rows - lo)
        idx = np.arange(lo, lo + m)
        start = rng.integers(0, 3000, m).astype(float)
        duration = rng.uniform(5, 30, m).round(3)
        keys = pa.array([f"v{i:010d}_{int(s * 1000)}_{int((s + d) * 1000)}"
                         for i, s, d in zip(idx, start, duration, strict=True)])
        has_audio = rng.random(m) < 0.9
        speech = has_audio & (rng.random(m) < 0.6)
        vision = pa.ListArray.from_arrays(pa.array(np.arange(m + 1) * 3, pa.int32()),
                                          short.take(pa.array(rng.integers(0, 4000, 3 * m))))
        audio_off = np.concatenate([[0], np.cumsum(np.where(has_audio, 3, 0))])
        audio = pa.ListArray.from_arrays(pa.array(audio_off, pa.int32()),
                                         short.take(pa.array(rng.integers(0, 4000, int(audio_off[-1])))))
        spoken = subs.take(pa.array(rng.integers(0, 4000, m))).to_numpy(zero_copy_only=False)
        subtitle = pa.array(np.where(speech, spoken, ""))
        lang = pa.array(np.where(speech, rng.choice(["en", "en", "en", "de", "es", "fr"], m), ""))
        shard = f"shard-{c:06d}.tar"
        mp4_bytes = rng.integers(200_000, 3_000_000, m)
        flac_bytes = np.where(has_audio, rng.integers(100_000, 900_000, m), 0)
        manifest = pa.table({
            "key": keys, "video_id": pa.array([f"v{i:010d}" for i in idx]), "request": keys,
            "input": pa.array([f"ids.txt:{i + 1}" for i in idx]),
            "url": pa.array([f"https://www.youtube.com/watch?v=v{i:010d}" for i in idx]),
            "start": start, "end": start + duration, "duration": duration, "fps": np.full(m, 25.0),
            "width": np.full(m, 640, np.int32), "height": np.full(m, 360, np.int32), "has_audio": has_audio,
            "audio_missing": pa.array(["" if a else "the source has no audio stream" for a in has_audio]),
            "num_frames": np.full(m, 8, np.int32), "vision_cap": vision, "audio_cap": audio,
            "subtitle": subtitle,
            "subtitle_language": lang, "vast_cap": long_.take(pa.array(rng.integers(0, 4000, m))),
            "subtitle_segments": pa.array(["[]"] * m), "provenance": pa.array([prov] * m),
            "meta": pa.array(["{}"] * m),
            "source_info": pa.array(['{"title": "a video", "uploader": "someone"}'] * m),
            "shard": pa.array([shard] * m), "mp4_bytes": mp4_bytes, "flac_bytes": flac_bytes,
            "has_video": np.full(m, True), "video_missing": pa.array([""] * m),
        }).cast(MANIFEST_SCHEMA)
        store.write_parquet(shard.replace(".tar", ".parquet"), manifest)
        n_fail = m // 20
        fail_ids = [f"f{c:06d}{j:04d}_0_5000" for j in range(n_fail)]
        t = t0 + c * 3.0
        ledger = pa.table({
            "key": pa.concat_arrays([keys, pa.array(fail_ids)]),
            "request": pa.concat_arrays([keys, pa.array(fail_ids)]),
            "input": pa.array([f"ids.txt:{i + 1}" for i in idx] + [f"ids.txt:f{k}" for k in fail_ids]),
            "video_id": pa.array([""] * (m + n_fail)), "source": pa.array([""] * (m + n_fail)),
            "start": np.concatenate([start, np.zeros(n_fail)]),
            "end": np.concatenate([start + duration, np.full(n_fail, 5.0)]),
            "n_clips": np.ones(m + n_fail, np.int32), "status": pa.array(["ok"] * m + ["failed"] * n_fail),
            "error_class": pa.array([""] * m + list(rng.choice(CLASSES, n_fail))),
            "message": pa.array([""] * m + [f"ERROR: [youtube] {k}: Video unavailable. This video has been "
                                            "removed by the uploader" for k in fail_ids]),
            "stage": pa.array([""] * m + ["fetch"] * n_fail), "shard": pa.array([shard] * m + [""] * n_fail),
            "duration": np.concatenate([duration, np.full(n_fail, np.nan)]),
            "bytes": np.concatenate([mp4_bytes + flac_bytes + 2000, np.zeros(n_fail, np.int64)]),
            "meta": pa.array(["{}"] * (m + n_fail)), "commit": np.full(m + n_fail, c, np.int64),
            "time": np.full(m + n_fail, t),
        }).cast(LEDGER_SCHEMA)
        store.write_parquet(f"ledger/part-{c:06d}.parquet", ledger)
    return store


def media(folder: Path) -> tuple[bytes, bytes]:
    """A real 1 s mp4 (H.264 + AAC) and its 16 kHz mono flac, a few KiB each: the sampled tars hold
    one per sample, so the walk over their headers is the real one without gigabytes on disk."""
    mp4, flac = folder / "clip.mp4", folder / "clip.flac"
    ffmpeg = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    subprocess.run([*ffmpeg, "-f", "lavfi", "-i", "testsrc2=s=96x64:r=10:d=1", "-f", "lavfi", "-i",
                    "anullsrc=r=16000:cl=mono", "-t", "1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-crf", "40", "-c:a", "aac", "-movflags", "+faststart", str(mp4)], check=True)
    subprocess.run([*ffmpeg, "-i", str(mp4), "-vn", "-ac", "1", "-ar", "16000", str(flac)], check=True)
    return mp4.read_bytes(), flac.read_bytes()


def write_tars(store: OutputStore, samples: int, folder: Path) -> int:
    """Real tars for the shards the gallery samples, sparse files for the rest. Returns real tars written."""
    import pyarrow.parquet as pq

    ledger = read_ledger(store, LEDGER_COLUMNS)
    chosen = sample_rows(ledger, samples)
    real = {s for s, st in zip(chosen["shard"].to_pylist(), chosen["status"].to_pylist(), strict=True)
            if st == "ok"}
    mp4, flac = media(folder)
    for number in store.committed_numbers():
        name = f"shard-{number:06d}.tar"
        path = Path(store.path(name))
        if name not in real:
            with open(store.path(f"ledger/part-{number:06d}.parquet"), "rb") as f:
                size = int(pq.read_table(f, columns=["bytes"])["bytes"].to_numpy().sum())
            with open(path, "wb") as f:
                f.truncate(size)  # sparse: its size is listed, its bytes are never read
            continue
        rows = pq.read_table(store.path(name.replace(".tar", ".parquet"))).to_pylist()
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
            for r in rows:
                sample = {k: v for k, v in r.items() if k not in ("shard", "mp4_bytes", "flac_bytes")}
                sample["provenance"] = json.loads(r["provenance"])
                members = {"json": json.dumps(sample).encode(), "mp4": mp4}
                if r["has_audio"]:
                    members["flac"] = flac
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{r['key']}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return len(real)


def _measure(what: str, output: str, samples: int, queue: mp.Queue) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    if what == "report":
        from vast.report.page import write_report

        write_report(output, samples)
    else:
        from vast.shards.summary import summarize

        summarize(OutputStore(output))
    # children (ffmpeg for the posters) are counted too
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    queue.put((time.perf_counter() - t0, time.process_time() - c0 + child.ru_utime + child.ru_stime,
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(what: str, output: str, samples: int) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of one step in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measure, args=(what, output, samples, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="ok clips (manifest rows)")
    ap.add_argument("--per-commit", type=int, default=1000, help="samples per shard (commit)")
    ap.add_argument("--samples", type=int, default=12, help="gallery size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        t0 = time.perf_counter()
        store = write_output(out, args.rows, args.per_commit)
        real = write_tars(store, args.samples, Path(tmp))
        on_disk = sum(p.stat().st_blocks * 512 for p in out.rglob("*") if p.is_file()) / 2**20
        print(f"output   {args.rows:,} manifest rows in {len(store.committed_numbers()):,} commits "
              f"(+{args.rows // 20:,} failed rows), {real} real tar(s); {on_disk:,.0f} MiB on disk; "
              f"built in {time.perf_counter() - t0:.0f} s")
        rows = []
        for what in ("summary", "report"):
            wall, cpu, rss = measure(what, str(out), args.samples)
            rows.append((wall, cpu, rss))
            print(f"{what:<8} {wall:7.2f} s wall  {cpu:7.2f} s CPU  peak RSS {rss:,.0f} MiB")
        page = out / "report" / "index.html"
        files = len(list((out / "report" / "media").iterdir()))
        print(f"page     {page.stat().st_size / 1024:,.0f} KiB + {files} media files; report/summary: "
              f"{rows[1][0] / rows[0][0]:.1f}× wall, {rows[1][1] / rows[0][1]:.1f}× CPU, "
              f"{rows[1][2] / rows[0][2]:.1f}× peak RSS")


if __name__ == "__main__":
    main()
