#!/usr/bin/env bash
# Put the Andes gateway in front of an engine you already run (any OpenAI-compatible server:
# vLLM, SGLang, TGI, llama.cpp's server, Ollama). Clients then talk to :8080 instead of the engine.
#
#   bash examples/proxy_existing_engine.sh http://127.0.0.1:8000      # e.g. a stock vLLM
#   bash examples/proxy_existing_engine.sh http://127.0.0.1:11434     # e.g. Ollama
#
# With stock engines the gateway paces and measures QoE; with `andes engine` (vLLM + the Andes
# scheduler) it also sends each stream's QoE spec and delivery slack to the scheduler.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/andes gateway --upstream "${1:-http://127.0.0.1:8000}" --port "${PORT:-8080}" \
    --tds "${TDS:-4.8}" --pacing server
