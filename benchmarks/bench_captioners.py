"""Benchmark the vision and audio captioner stages: batched (batch 8) vs one clip at a time.

    python benchmarks/bench_captioners.py                  # tiny random-weight captioners on CPU
    python benchmarks/bench_captioners.py --device cuda    # the same stages on a GPU (bf16/fp16 autocast)
    python benchmarks/bench_captioners.py --device cuda --vision-checkpoint RUN_DIR \\
        --audio-checkpoint RUN_DIR --tokenizer BERT_DIR    # released captioners, where you have them

Both modes run in the same process on the same clips (random 224 px frames as the media stage hands
them over, a 10 s FLAC tone per clip), through the stage's ``__call__`` as the graph calls it, so
audio decoding and preprocessing are counted. Prints figures only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time

import numpy as np
import torch

from vast.captioners.audio import AudioCaptioner, AudioCaptionerConfig
from vast.captioners.tiny import write_tiny_captioners
from vast.captioners.vision import VisionCaptioner, VisionCaptionerConfig
from vast.pipeline.stage import LEDGER_COLUMNS, batch_of


def tone_flac(seconds: float) -> bytes:
    """A 16 kHz mono FLAC of alternating tones (what the media stage writes for a clip)."""
    tone = f"sine=frequency=440:duration={seconds}:beep_factor=2"
    args = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", tone, "-ar", "16000", "-ac", "1",
            "-f", "flac", "pipe:1"]
    return subprocess.run(args, capture_output=True, check=True).stdout


def clip_rows(n: int, frame_size: int, seconds: float) -> list[dict]:
    """``n`` ok clip rows with every ledger column, 8 random frames and the FLAC tone."""
    rng = np.random.default_rng(0)
    flac = tone_flac(seconds)
    rows = []
    for i in range(n):
        key = f"bench{i:04d}_0_{round(seconds * 1000)}"
        row = dict.fromkeys(LEDGER_COLUMNS, "")
        row |= {"request": key, "key": key, "video_id": f"bench{i:04d}", "start": 0.0, "end": seconds,
                "meta": "{}", "skip_keys": [], "n_clips": 1, "status": "ok"}
        row |= {"frames": rng.integers(0, 256, (8, frame_size, frame_size, 3), dtype=np.uint8), "flac": flac,
                "mp4": b"", "clip_info": json.dumps({"has_audio": True, "audio_missing": None})}
        rows.append(row)
    return rows


def full_random_captioners(directory: str, tokenizer: str) -> dict[str, str]:
    """Random-weight captioners at the released dimensions (EVA-CLIP-g / BEATs + BERT-base), with the
    tiny tokenizer's vocabulary: the compute of the real ones, meaningless captions."""
    from pathlib import Path

    from vast.model import create_model, load_tokenizer, save_checkpoint

    tok = load_tokenizer(tokenizer)
    text = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "cls_token_id": tok.cls_token_id,
            "sep_token_id": tok.sep_token_id, "mask_token_id": tok.mask_token_id}
    paths = {}
    for key, name in (("vision_captioner", "vision-captioner"), ("audio_captioner", "audio-captioner")):
        torch.manual_seed(0)
        path = Path(directory) / f"{key}-full.pt"
        save_checkpoint(create_model(name, text=text), path,
                        extra={"note": "random weights at the released dimensions: captions are meaningless"})
        paths[key] = str(path)
    return paths


def samples_per_s(stage, rows: list[dict], batch: int, device: torch.device) -> float:
    """Clips per second through ``stage`` called on consecutive batches of ``batch`` rows."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    stage(batch_of(rows[:batch]))  # warm-up: kernels, allocator, caches
    sync()
    t = time.perf_counter()
    for i in range(0, len(rows), batch):
        out = stage(batch_of(rows[i : i + batch]))
        assert all(s == "ok" for s in out["status"]), out["message"]
    sync()
    return len(rows) / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), bf16, fp16, fp32")
    p.add_argument("--clips", type=int, default=32, help="clips per mode")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="audio length per clip")
    p.add_argument("--frame-size", type=int, default=224, help="frame size the media stage hands over")
    p.add_argument("--passes", type=int, default=2, help="timed passes per mode; the best is printed")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--size", default="tiny", choices=["tiny", "full"],
                   help="without checkpoints: random captioners, tiny or at the released dimensions")
    p.add_argument("--vision-checkpoint", help="default: the tiny random-weight vision captioner")
    p.add_argument("--audio-checkpoint", help="default: the tiny random-weight audio captioner")
    p.add_argument("--tokenizer", help="BERT tokenizer directory (required with real checkpoints)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="bench-captioners-") as tmp:
        tiny = write_tiny_captioners(tmp)
        if args.size == "full":
            tiny |= full_random_captioners(tmp, tiny["tokenizer"])
        tokenizer = args.tokenizer or tiny["tokenizer"]
        common = {"device": args.device, "dtype": args.dtype, "tokenizer": tokenizer}
        stages = {
            "vision_caption": VisionCaptioner(VisionCaptionerConfig(
                checkpoint=args.vision_checkpoint or tiny["vision_captioner"], **common)),
            "audio_caption": AudioCaptioner(AudioCaptionerConfig(
                checkpoint=args.audio_checkpoint or tiny["audio_captioner"], **common)),
        }
        rows = clip_rows(args.clips, args.frame_size, args.seconds)
        print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
              f"dtype {args.dtype}, torch threads {torch.get_num_threads()}, {args.clips} clips per mode")
        for name, stage in stages.items():
            model = stage.provenance()["model"]
            random = model in tiny.values()
            note = f" ({args.size}, random weights: captions are meaningless)" if random else ""
            print(f"{name}: {model}{note}")
            # best of a few passes: the machine may be shared, and contention only ever slows a pass
            batched = max(samples_per_s(stage, rows, args.batch, device) for _ in range(args.passes))
            single = max(samples_per_s(stage, rows, 1, device) for _ in range(args.passes))
            print(f"  batch {args.batch}: {batched:8.2f} clips/s   one at a time: {single:8.2f} clips/s   "
                  f"ratio {batched / single:.2f}x")

if __name__ == "__main__":
    main()
