#!/usr/bin/env bash
# Every GPU figure of vast-pipeline in one run, on one H100/H200, in under 8 minutes:
#   1. vision + audio captioners, bf16: clips/s batched (32) vs batch of one, and the ratio
#   2. Whisper large on the faster backend (fp16): real-time factor, batched vs one at a time
#   3. fusion: generated tokens/s, vLLM vs transformers on the same prompts
#   4. VAST `vast` config train step (bf16): step time, TFLOP/s and MFU
# Random weights at the real dimensions unless MODELS=/dir holds real ones:
#   $MODELS/vast/vision_captioner, $MODELS/vast/audio_captioner, $MODELS/bert-base-uncased (tokenizer),
#   $MODELS/faster-whisper-large-v3 (CTranslate2), $MODELS/llm (a causal LM directory).
# Installs nothing: it runs the project's environment (.venv, or PYTHON=...); the fusion part needs
# vLLM there. Each part's figures print as they come, then a summary; exit 1 if any part failed.
#
#   bash benchmarks/gpu_suite.sh             # the run
#   bash benchmarks/gpu_suite.sh --dry-run   # print the plan, check every part's imports (any machine)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODELS=${MODELS:-}
LOG_DIR=$(mktemp -d /tmp/gpu_suite.XXXXXX)
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1

have() { [ -n "$MODELS" ] && [ -e "$MODELS/$1" ]; }

captioner_args=(--device cuda --dtype bf16 --clips 64 --batch 32 --passes 2)
if have vast/vision_captioner && have vast/audio_captioner && have bert-base-uncased; then
    captioner_args+=(--vision-checkpoint "$MODELS/vast/vision_captioner"
                     --audio-checkpoint "$MODELS/vast/audio_captioner" --tokenizer "$MODELS/bert-base-uncased")
else
    captioner_args+=(--size full)
fi
whisper_model=random-large
have faster-whisper-large-v3 && whisper_model="$MODELS/faster-whisper-large-v3"
lm=random-1b
have llm && lm="$MODELS/llm"

# name | command | what it prints
parts=(
    "captioners|$PY benchmarks/bench_captioners.py ${captioner_args[*]}|clips/s batched vs one at a time, bf16"
    "whisper|$PY benchmarks/bench_asr_fusion.py --device cuda --backends faster --faster-model $whisper_model --clips 16 --batch 16 --clip-s 30 --beam-size 5 --max-tokens 128 --repeats 1 --fusion-backends none|real-time factor, faster backend"
    "fusion|$PY benchmarks/bench_asr_fusion.py --device cuda --backends none --lm $lm --fusion-backends transformers,vllm --clips 64 --batch 32 --max-new-tokens 64 --repeats 1|tokens/s, vLLM vs transformers"
    "train|$PY benchmarks/bench_model.py --cuda --batch 8 --steps 10|vast step time, TFLOP/s, bf16 MFU"
)

echo "gpu_suite: ${#parts[@]} parts; logs in $LOG_DIR; weights: ${MODELS:-random at real dimensions}"
for p in "${parts[@]}"; do
    IFS='|' read -r name cmd what <<<"$p"
    echo "  [$name] $what"
    echo "      $cmd"
done

if [ "$dry" = 1 ]; then
    # every module the parts import must load here; the GPU prerequisites are reported, not required
    "$PY" - <<'EOF'
import importlib, importlib.util, sys
sys.path.insert(0, "benchmarks")
failed = []
for module in ["bench_captioners", "bench_asr_fusion", "bench_model", "vast.captioners.llm", "faster_whisper",
               "ctranslate2", "transformers", "torch.utils.flop_counter"]:
    try:
        importlib.import_module(module)
        print(f"  import {module}: ok")
    except Exception as e:  # noqa: BLE001 - report every failing import, then fail
        failed.append(module)
        print(f"  import {module}: FAILED ({type(e).__name__}: {e})")
import torch
print(f"  CUDA: {'available, ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available (a real run needs one GPU)'}")
print(f"  vLLM: {'installed' if importlib.util.find_spec('vllm') else 'not installed (the fusion part needs it: pip install vllm)'}")
sys.exit(1 if failed else 0)
EOF
    exit $?
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite: no CUDA GPU visible" >&2
    exit 1
fi
status=()
start=$(date +%s)
for p in "${parts[@]}"; do
    IFS='|' read -r name cmd what <<<"$p"
    echo; echo "== [$name] $what"
    t0=$(date +%s)
    # shellcheck disable=SC2086 - the command is our own fixed string, split on purpose
    if $cmd 2>&1 | tee "$LOG_DIR/$name.log"; then
        status+=("$name: ok in $(( $(date +%s) - t0 )) s")
    else
        status+=("$name: FAILED after $(( $(date +%s) - t0 )) s (log $LOG_DIR/$name.log)")
    fi
done
echo; echo "== summary ($(( $(date +%s) - start )) s in all)"
grep -hE "ratio|real-time factor|tokens/s|MFU|TFLOP|step:" "$LOG_DIR"/*.log | sed 's/^/  /'
printf '  %s\n' "${status[@]}"
! printf '%s\n' "${status[@]}" | grep -q FAILED
