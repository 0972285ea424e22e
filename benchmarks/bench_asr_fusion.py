"""Benchmark the Whisper subtitle stage (each backend) and the LLM fusion stage: batched vs one at a time.

    python benchmarks/bench_asr_fusion.py                      # tiny random models on CPU (built here)
    python benchmarks/bench_asr_fusion.py --device cuda --lm random-1b --fusion-backends transformers,vllm
    python benchmarks/bench_asr_fusion.py --device cuda --batch 32 --clips 64 \\
        --whisper-model /models/large-v3.pt --faster-model /models/faster-whisper-large-v3 \\
        --lm /models/vicuna-13b-v1.5 --beam-size 5 --max-tokens 0 --max-new-tokens 64

Speech clips are made with espeak-ng (different sentences, padded with silence to ``--clip-s``).
Both modes run the same stage object on the same clips after a warm-up; decoding is greedy or
beam (deterministic) with the gates off, so both modes do the same work. Prints samples/s, the
batched/one-at-a-time ratio, Whisper's real-time factor (processing seconds per audio second)
and fusion's generated tokens/s; each mode's best of ``--repeats`` alternating passes. Prints figures
only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vast.captioners.fusion import FusionConfig, OmniCaptionFuser
from vast.captioners.subtitles import WhisperConfig, WhisperSubtitler
from vast.captioners.tiny_lm import (
    LARGE_WHISPER_DIMS,
    write_tiny_faster_whisper,
    write_tiny_lm,
    write_tiny_whisper,
)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Now add a pinch of salt and stir the pasta for another minute.",
    "Welcome back to the channel, today we are fixing a bicycle tire.",
    "The weather tomorrow will be sunny with a light breeze from the west.",
    "Please remember to subscribe and leave a comment below this video.",
    "He scored in the last minute and the whole stadium started cheering.",
    "First, remove the four screws that hold the back cover in place.",
    "This lake freezes every winter and people come here to skate on it.",
]


def speech_clips(n: int, seconds: float, workdir: Path) -> list[bytes]:
    """``n`` 16 kHz mono FLAC clips of espeak-ng speech, each padded with silence to ``seconds``."""
    clips = []
    for i in range(n):
        wav = workdir / f"speech{i}.wav"
        speed = str(140 + 10 * (i % 5))  # words per minute
        subprocess.run(["espeak-ng", "-s", speed, "-w", str(wav), SENTENCES[i % len(SENTENCES)]], check=True)
        cmd = ["ffmpeg", "-v", "error", "-i", str(wav), "-af", f"apad=whole_dur={seconds}",
               "-t", str(seconds), "-ar", "16000", "-ac", "1", "-f", "flac", "pipe:1"]
        clips.append(subprocess.run(cmd, capture_output=True, check=True).stdout)
    return clips


def fusion_rows(n: int) -> list[dict[str, Any]]:
    """Rows with 3 vision captions, 3 audio captions and a subtitle (some with inputs missing)."""
    rows = []
    for i in range(n):
        s = SENTENCES[i % len(SENTENCES)]
        vision = [f"a person talks to the camera in scene {i}", "a room with a table and a lamp",
                  "someone gestures with both hands"]
        audio = [] if i % 4 == 3 else ["a man speaks", "quiet background music", "a door closes"]
        rows.append({"vision_cap": vision, "audio_cap": audio, "subtitle": "" if i % 5 == 4 else s})
    return rows


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def batched(run: Callable[[list[Any]], list[Any]], items: list[Any], batch: int) -> list[Any]:
    """``run`` over ``items`` in consecutive batches of ``batch``."""
    return [o for i in range(0, len(items), batch) for o in run(items[i:i + batch])]


def compare(label: str, run: Callable[[list[Any]], list[Any]], items: list[Any], batch: int,
            repeats: int) -> tuple[float, float]:
    """Time ``run`` over ``items`` in batches of ``batch`` and one by one, alternating the two modes
    ``repeats`` times and keeping each mode's fastest pass (shared machines are noisy); print both."""
    run(items[:batch])  # warm-up: lazy init, kernels, allocator
    t_batched = t_single = float("inf")
    for _ in range(repeats):
        t, out = timed(lambda: batched(run, items, batch))
        t_batched = min(t_batched, t)
        t, single = timed(lambda: [run([x])[0] for x in items])
        t_single = min(t_single, t)
    n = len(items)
    same = "identical outputs" if out == single else "OUTPUTS DIFFER"
    print(f"  {label:<22} batched(b={batch}) {n / t_batched:8.2f} samples/s | one-at-a-time "
          f"{n / t_single:8.2f} samples/s | ratio {t_single / t_batched:5.2f}x | {same}")
    return t_batched, t_single


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 …")
    ap.add_argument("--clips", type=int, default=8, help="clips per measurement")
    ap.add_argument("--clip-s", type=float, default=10.0, help="seconds of audio per clip")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3, help="passes per mode; the fastest is reported")
    ap.add_argument("--backends", default="openai,faster", help="Whisper backends to measure (`none`: skip)")
    ap.add_argument("--whisper-model", help="openai-whisper checkpoint file or name (default: tiny random)")
    ap.add_argument("--faster-model", help="CTranslate2 Whisper dir or name, or `random-large` "
                    "(random weights at large-v2/v3 size; default: tiny random)")
    ap.add_argument("--lm", help="causal LM directory or hub name, or `random-1b` (default: tiny random)")
    ap.add_argument("--fusion-backends", default="transformers",
                    help="`transformers` or `transformers,vllm` (the same prompts also through vLLM)")
    ap.add_argument("--prompt", default="vast27m-v1")
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=24,
                    help="Whisper tokens per 30 s window (0: model limit)")
    ap.add_argument("--max-new-tokens", type=int, default=24, help="fusion tokens per clip")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_asr_fusion_"))
    tiny = not (args.whisper_model and args.faster_model and args.lm)
    backends = [b.strip() for b in args.backends.split(",") if b.strip() not in ("", "none")]
    fusion_backends = [b.strip() for b in args.fusion_backends.split(",") if b.strip() not in ("", "none")]
    writers = {"openai": (args.whisper_model, write_tiny_whisper),
               "faster": (args.faster_model, write_tiny_faster_whisper)}
    if args.faster_model == "random-large":
        large = str(write_tiny_faster_whisper(work, LARGE_WHISPER_DIMS))
        writers["faster"] = (large, write_tiny_faster_whisper)
    whisper_models = {b: writers[b][0] or str(writers[b][1](work)) for b in backends}
    if fusion_backends:
        lm = random_lm(work) if args.lm == "random-1b" else args.lm or str(write_tiny_lm(work))
    clips = [{"flac": f} for f in speech_clips(args.clips, args.clip_s, work)] if backends else []
    audio_s = args.clips * args.clip_s
    print(f"device {args.device}; {args.clips} clips of {args.clip_s:g} s speech; batch {args.batch}; "
          + ("tiny random models where none was given (meaningless outputs)" if tiny else "given models"))

    if backends:
        print(f"Whisper (subtitle stage, gates off, temperature 0, beam {args.beam_size}):")
    for backend in backends:
        config = WhisperConfig(backend=backend, model=whisper_models[backend], device=args.device,
                               beam_size=args.beam_size, max_tokens=args.max_tokens or None,
                               no_speech_threshold=None, logprob_threshold=None,
                               compression_ratio_threshold=None)
        stage = WhisperSubtitler(config)
        t_b, t_s = compare(f"whisper/{backend}", stage.annotate, clips, args.batch, args.repeats)
        print(f"  {'':<22} real-time factor: batched {t_b / audio_s:.4f}, "
              f"one-at-a-time {t_s / audio_s:.4f} (processing s per audio s)")

    if not fusion_backends:
        return
    print(f"Fusion (prompt {args.prompt}, greedy, max_new_tokens {args.max_new_tokens}):")
    fuser = OmniCaptionFuser(FusionConfig(model=lm, prompt=args.prompt, device=args.device,
                                          max_new_tokens=args.max_new_tokens))
    prompts = fuser.prompts(fusion_rows(args.clips))
    t_b, t_s = compare("fusion/transformers", fuser.backend.generate, prompts, args.batch, args.repeats)
    raw = batched(fuser.backend.generate, prompts, args.batch)
    tokens = sum(len(fuser.backend.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in raw)
    print(f"  {'':<22} generated ≈{tokens} tokens: batched {tokens / t_b:.1f} tokens/s, "
          f"one-at-a-time {tokens / t_s:.1f} tokens/s")
    if "vllm" in fusion_backends:
        # the same prompts through vLLM's offline engine, all in one call (its scheduler batches them)
        del fuser
        _free_gpu()
        engine = OmniCaptionFuser(FusionConfig(model=lm, prompt=args.prompt, backend="vllm",
                                               device=args.device, max_new_tokens=args.max_new_tokens,
                                               gpu_memory_fraction=0.6))
        assert engine.prompts(fusion_rows(args.clips)) == prompts, "vLLM got different prompt text"
        engine.backend.generate(prompts[:args.batch])  # warm-up
        t_v = min(timed(lambda: engine.backend.generate(prompts))[0] for _ in range(args.repeats))
        out = engine.backend.generate(prompts)
        v_tokens = sum(len(engine.backend.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in out)
        print(f"  fusion/vllm            {len(prompts)} prompts in one call: {v_tokens / t_v:.1f} tokens/s "
              f"({v_tokens} tokens) | x{(v_tokens / t_v) / (tokens / t_b):.2f} vs transformers batched")


def random_lm(work: Path) -> str:
    """A random-weight Llama at TinyLlama-1.1B dimensions with the tiny LM's tokenizer (and chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tiny = write_tiny_lm(work)
    out = work / "random-llama-1b"
    tok = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                         num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _free_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
