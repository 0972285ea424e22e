"""Benchmark the fusion stage against an OpenAI-compatible server: generated tokens/s vs requests in flight.

    python benchmarks/bench_fusion_server.py       # starts `transformers serve` on 127.0.0.1 (CPU, continuous
                                                   # batching) with SmolLM2-135M-Instruct (tests/llmserver.py)
    python benchmarks/bench_fusion_server.py --base-url http://127.0.0.1:8000/v1 --model NAME \\
        --concurrency 1,8,32,128 --rows 512        # a server you run: vllm serve, SGLang, TGI, llama.cpp …

One fusion actor (``OmniCaptionFuser`` with ``backend: openai-server``) in this process sends the same
rows (``bench_asr_fusion.fusion_rows``: 3 vision captions, 3 audio captions, a subtitle) at each
``server.concurrency``, greedy, ``--max-new-tokens`` per row; tokens are what the server reports
(``usage.completion_tokens``). Prints rows/s, tokens/s and the speed-up over the first concurrency,
and, for a server started here, its CPU seconds (a steadier figure than wall time on a shared machine).
Prints figures only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_asr_fusion import fusion_rows  # noqa: E402

from tests.llmserver import LLMServer, smollm2_dir  # noqa: E402
from vast.captioners.fusion import FusionConfig, OmniCaptionFuser  # noqa: E402
from vast.captioners.llm import ServerOptions  # noqa: E402
from vast.pipeline.stage import batch_of  # noqa: E402

OK = {"status": "ok", "error_class": "", "message": "", "stage": ""}


def run(base_url: str, model: str, rows: list[dict], concurrency: int, max_new_tokens: int, api: str,
        server: LLMServer | None) -> tuple[float, int, float | None, int]:
    """Wall seconds, generated tokens, server CPU seconds (None for an outside server), failed rows."""
    options = ServerOptions(base_url=base_url, api=api, concurrency=concurrency, timeout_s=600, retries=2)
    stage = OmniCaptionFuser(FusionConfig(model=model, backend="openai-server", max_new_tokens=max_new_tokens,
                                          server=options))
    cpu = _cpu(server)
    start = time.perf_counter()
    out = stage(batch_of(rows))
    wall = time.perf_counter() - start
    cpu_used = None if cpu is None else _cpu(server) - cpu
    return wall, stage.backend.generated_tokens, cpu_used, int(sum(s != "ok" for s in out["status"]))


def _cpu(server: LLMServer | None) -> float | None:
    if server is None or server.proc is None:
        return None
    import psutil

    proc = psutil.Process(server.proc.pid)
    return sum(p.cpu_times().user + p.cpu_times().system for p in [proc, *proc.children(recursive=True)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", help="an OpenAI-compatible server's /v1 root (default: start one here)")
    ap.add_argument("--model", help="the model name the server serves (default: the one started here)")
    ap.add_argument("--api", default="chat", choices=["chat", "completions"])
    ap.add_argument("--concurrency", default="1,2,4,8", help="requests in flight per actor, comma-separated")
    ap.add_argument("--rows", type=int, default=16, help="rows per measurement")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    args = ap.parse_args()

    server = None
    if args.base_url is None:
        log = Path(tempfile.mkdtemp(prefix="bench_fusion_server_")) / "server.log"
        server = LLMServer(smollm2_dir(), log, continuous_batching=True).start()
        print("started `transformers serve` (CPU, 1 thread, continuous batching), SmolLM2-135M-Instruct, on "
              f"{server.base_url}; log {log}")
    base_url = args.base_url or server.base_url
    model = args.model or server.model
    rows = [{**OK, "key": f"r{i}", **r} for i, r in enumerate(fusion_rows(args.rows))]
    levels = [int(c) for c in args.concurrency.split(",")]
    try:
        run(base_url, model, rows[:2], 2, args.max_new_tokens, args.api, server)  # warm-up
        print(f"{args.rows} rows, greedy, max_new_tokens {args.max_new_tokens}, api {args.api}, one actor:")
        base = None
        for c in levels:
            wall, tokens, cpu, failed = run(base_url, model, rows, c, args.max_new_tokens, args.api, server)
            rate = tokens / wall
            base = base or rate
            cpu_part = f" | {tokens / cpu:7.1f} tokens per server CPU-s" if cpu else ""
            print(f"  concurrency {c:>4}: {args.rows / wall:7.2f} rows/s | {rate:8.1f} tokens/s "
                  f"({tokens} tokens in {wall:.1f} s) | x{rate / base:.2f} vs concurrency {levels[0]}"
                  f"{cpu_part}" + (f" | {failed} FAILED" if failed else ""))
    finally:
        if server is not None:
            server.kill()


if __name__ == "__main__":
    main()
