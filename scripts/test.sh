#!/usr/bin/env bash
# The quickstart's second command: set up with the test tools, lint, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check vast tests benchmarks
.venv/bin/python -m pytest -q "$@"
