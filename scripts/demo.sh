#!/usr/bin/env bash
# The quickstart's first command: set up, write the demo's tiny models, generate sample media,
# ingest it with every stage on the embedded default (local Ray, local disk), then show the
# dataset's status. Output: out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/vast-pipeline tiny-models out/models   # tiny random-weight models: meaningless captions
.venv/bin/vast-pipeline sample out/sample
.venv/bin/vast-pipeline ingest out/sample/ids.txt --config demo --output out/demo
.venv/bin/vast-pipeline status out/demo
