"""The ``andes`` command: one entry point, one subcommand per job.

Each subcommand lives next to the code it drives, in a module exposing
``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when chosen, so
``andes --help`` stays fast and ``andes sim`` never imports vLLM.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "sim": ("engine.sim.cli", "run the trace-driven simulator (policies side by side)"),
    "engine": ("engine.vllm.cli", "start vLLM's OpenAI server with the Andes scheduler"),
    "gateway": ("gateway.cli", "the pacing gateway in front of an OpenAI-compatible engine"),
    "serve": ("andes.serve", "engine on the bundled model + gateway + demo page"),
    "bench": ("bench.cli", "replay a workload against an endpoint; QoE per request"),
    "chat": ("gateway.chat", "a terminal chat that renders answers at your reading pace"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="andes",
        description="Andes: stream LLM text at each reader's pace; schedule the engine for QoE.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    name = argv[0]
    if name not in SUBCOMMANDS:
        parser.error(f"unknown command {name!r} (choose from {', '.join(SUBCOMMANDS)})")
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"andes {name}: cannot load {module_name}: {exc}", file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog=f"andes {name}", description=help_text)
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
