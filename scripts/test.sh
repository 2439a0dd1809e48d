#!/usr/bin/env bash
# The whole test suite: sets up what it needs, then lint, Python tests (the real vLLM engine on the
# bundled model, real aiohttp servers, real Chromium) and the JavaScript tests.
set -euo pipefail
cd "$(dirname "$0")/.."
ANDES_SETUP_BROWSER=1 bash scripts/setup.sh
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest"
exec .venv/bin/pytest -q -rs --durations=15 "$@"
