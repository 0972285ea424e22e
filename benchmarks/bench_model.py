"""Benchmark the VAST model: forward+backward step time and peak memory, parameter counts.

    python benchmarks/bench_model.py            # tiny fwd+bwd on CPU, then vast parameter counts (meta)
    python benchmarks/bench_model.py --cuda     # vast bf16 fwd+bwd, 8 frames, batch 8, on a GPU
    python benchmarks/bench_model.py --bf16     # the --cuda code path (bf16 autocast) with tiny on CPU

Prints figures only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from vast.model import create_model

TASK = "ret%tvas_cap%tvas"


def synthetic_batch(model, batch: int, frames: int, clips: int, device: torch.device) -> dict:
    """Random inputs of the training shapes; texts as ready token tensors (no tokenizer needed)."""
    cfg = model.cfg
    size = cfg.vision.image_size
    g = torch.Generator().manual_seed(0)

    def text(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(cfg.text.mask_token_id + 1, cfg.text.vocab_size, (batch, length), generator=g)
        ids[:, 0], ids[:, -1] = cfg.text.cls_token_id, cfg.text.sep_token_id
        return ids.to(device), torch.ones_like(ids, dtype=torch.bool).to(device)

    return {
        "frames": torch.randn(batch, frames, 3, size, size, generator=g).to(device),
        "audio": torch.randn(batch, clips, 1024, 64, generator=g).to(device),
        "subtitle": text(cfg.max_subtitle_len),
        "text": text(cfg.max_omni_caption_len),
    }


def bench_step(
    name: str, device: torch.device, batch: int, frames: int, steps: int, bf16: bool, checkpointing: bool
) -> None:
    """Median fwd+bwd time and peak memory (GPU: allocated; CPU: process RSS) of one training step."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else lambda: None
    torch.manual_seed(0)
    model = create_model(name, device=device).train()
    model.set_grad_checkpointing(checkpointing)
    data = synthetic_batch(model, batch, frames=frames, clips=1, device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(steps + 2):  # two warm-up steps
        sync()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(data, TASK)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t)
    n = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name() if cuda else f"CPU x{torch.get_num_threads()} threads"
    print(
        f"{name} ({n:,} params) on {where}, {'bf16 autocast' if bf16 else 'fp32'}, batch {batch}, "
        f"{frames} frames at {model.cfg.vision.image_size} px, 1 audio slice, {TASK}, "
        f"gradient checkpointing {'on' if checkpointing else 'off'}"
    )
    med = statistics.median(times)
    print(
        f"  fwd+bwd step: median {med * 1e3:.1f} ms, min {min(times) * 1e3:.1f} ms over {steps} steps "
        f"({batch / med:.1f} samples/s)"
    )
    flops = step_flops(model, data)
    peak = PEAK_BF16_FLOPS.get(next((k for k in PEAK_BF16_FLOPS if k in where), ""), None) if cuda else None
    mfu = f", MFU {flops / med / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16 dense" if peak and bf16 else ""
    print(f"  {flops / 1e12:.2f} TFLOP per step (counted): {flops / med / 1e12:.1f} TFLOP/s achieved{mfu}")
    if cuda:
        print(f"  peak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"  peak RSS {rss / 1024:.0f} MiB (+{(rss - rss0) / 1024:.0f} MiB during the steps)")


# Dense bf16 tensor-core peaks (no sparsity), by device-name substring, for MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def step_flops(model: torch.nn.Module, data: dict) -> float:
    """FLOPs of one forward+backward step, counted by torch's FlopCounterMode (matmuls, convs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.autocast(device.type, dtype=torch.bfloat16):
        model(data, TASK)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def param_counts(name: str) -> None:
    """Parameters per top-level module, counted on the meta device (nothing allocated)."""
    model = create_model(name, device="meta")
    print(f"\nparameters of {name!r} (built on meta)")
    rows = {child: sum(p.numel() for p in module.parameters()) for child, module in model.named_children()}
    rows["(temperature, frame and type embeddings)"] = sum(p.numel() for p in model.parameters(recurse=False))
    width = max(map(len, rows))
    for k, n in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<{width}}  {n:>14,}")
    print(f"  {'total':<{width}}  {sum(p.numel() for p in model.parameters()):>14,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="run on the GPU (default model: vast, bf16)")
    ap.add_argument("--model", default=None, help="config name (default: tiny on CPU, vast with --cuda)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (always on with --cuda)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frames", type=int, default=None, help="frames per clip (default: 2 tiny, 8 vast)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    name = args.model or ("vast" if args.cuda else "tiny")
    frames = args.frames or (8 if name != "tiny" else 2)
    if args.cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        bench_step(name, torch.device("cuda"), args.batch, frames, args.steps, True, args.checkpointing)
    else:
        bench_step(name, torch.device("cpu"), args.batch, frames, args.steps, args.bf16, args.checkpointing)
        param_counts("vast")


if __name__ == "__main__":
    main()
