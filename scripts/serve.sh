#!/usr/bin/env bash
# The main job: the vLLM engine with the Andes scheduler on the bundled model, the pacing gateway,
# and the demo chat page (printed URL). Extra arguments go to `andes serve` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/andes serve "$@"
