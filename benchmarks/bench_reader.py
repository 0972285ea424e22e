"""Reader throughput and the data-wait share of a tiny-model training step.

Prints (never asserts): samples/s of one reader worker decoding 8 frames + 1 audio clip (224 px,
train augmentation) from shards packed by ``shards build``; then the share of step time the tiny
model's training loop spends waiting for data with N DataLoader workers.

    python benchmarks/bench_reader.py [--clips 8] [--seconds 8] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.train.shardgen import SOURCES, make_clip, shard_urls, vocab_dir  # noqa: E402
from vast.pipeline.build import shards_build  # noqa: E402
from vast.shards.reader import CorpusConfig, DecodeSpec, ReaderConfig, ShardStream  # noqa: E402


def build(root: Path, clips: int, seconds: float) -> Path:
    media = root / "media"
    media.mkdir()
    records = []
    pictures = list(SOURCES.values())
    for i in range(clips):
        picture, tone, caps, *_ = pictures[i % len(pictures)]
        picture = picture.replace("96x64", "640x360")
        make_clip(media / f"clip{i}.mp4", picture, tone or 440, seconds)
        records.append({"video_id": f"clip{i}", "desc": caps})
    (root / "ann.json").write_text(json.dumps(records))
    out = root / "shards"
    shards_build(str(root / "ann.json"), str(media), str(out), preset="tiny",
                 overrides={"progress": False, "stages.media.options.max_height": 360})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-reader-"))
    try:
        shards = build(root, args.clips, args.seconds)
        urls = shard_urls(shards)
        # 1. one worker (in-process), 8 frames + 1 audio clip at 224 px, train augmentation
        cfg = ReaderConfig(corpora=[CorpusConfig(urls=urls)], num_workers=0, shuffle_buffer=8)
        spec = DecodeSpec(num_frames=8, num_audio_clips=1, image_size=224, train=True)
        stream = iter(ShardStream(cfg, spec, 1))
        next(stream)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 10.0:
            next(stream)
            n += 1
        rate = n / (time.perf_counter() - t0)
        print(f"reader: {rate:.1f} samples/s per worker (8 frames 224px + 1 fbank slice, "
              f"{args.seconds:g}s 360p clips)")

        # 2. data-wait share of the tiny model's step (batch 4, 2 frames 32 px + audio, tva retrieval)
        from vast.train.cli import load_train_config
        from vast.train.trainer import train

        voc = vocab_dir(root / "vocab")
        corpora = [{"urls": urls}]
        cfg_t = load_train_config("tiny-retrieval", {
            "model.tokenizer": str(voc), "output": str(root / "run"), "data.train.corpora": corpora,
            "data.train.resampled": True, "data.train.num_workers": args.workers, "data.valid": None,
            "train_steps": args.steps, "log_freq": 1})
        train(cfg_t)
        recs = [json.loads(x) for x in (root / "run" / "log.jsonl").read_text().splitlines()]
        steps = [r for r in recs if "data_wait_share" in r][3:]  # after warm-up
        share = sum(r["data_wait_share"] * r["step_s"] for r in steps) / sum(r["step_s"] for r in steps)
        mean_step = sum(r["step_s"] for r in steps) / len(steps)
        print(f"tiny model: data wait {100 * share:.1f}% of step time ({mean_step * 1000:.0f} ms/step, "
              f"{args.workers} worker(s), batch 4)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
