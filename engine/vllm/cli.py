"""``andes engine``: vLLM's OpenAI server with the Andes scheduler (bundled model by default).

    andes engine                                   # bundled SmolLM2-135M-Instruct, policy andes
    andes engine --policy fcfs --enforce-eager     # the Andes plug-in running vLLM's FCFS policy
    andes engine --stock                           # vLLM's own scheduler, untouched
    andes engine --model /path/to/hf -- --max-num-seqs 8   # after "--": vLLM's own options
    andes engine --prepare-model                   # only convert the bundled model, then exit

The process becomes vLLM's server (``exec``), so signals and the exit status are vLLM's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping

from core.cli import add_deprecated_alias
from engine.vllm.launch import EngineConfig
from engine.vllm.model import BUNDLED_MODEL, prepare_bundled_model, resolve_model
from engine.vllm.settings import SchedulerSettings

__all__ = ["add_arguments", "config_from_args", "preflight", "run", "scheduler_settings"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``andes engine`` options."""
    parser.add_argument(
        "--model",
        default=BUNDLED_MODEL,
        help="model path or name; 'bundled' (default) is SmolLM2-135M-Instruct",
    )
    parser.add_argument("--served-model-name", default=None, help="the OpenAI model name")
    parser.add_argument(
        "--policy",
        default=None,
        help="scheduling policy: andes, fcfs, lqf, round_robin, or pkg.module:name "
        "(default: $ANDES_POLICY, else andes); its options: ANDES_POLICY_OPTIONS='{...}'",
    )
    parser.add_argument(
        "--stock", action="store_true", help="run vLLM's own scheduler untouched (no Andes plug-in)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument(
        "--delta-t",
        type=float,
        default=None,
        metavar="S",
        help="the policy's horizon Δt, seconds (default: the policy's)",
    )
    parser.add_argument(
        "--ttft",
        dest="default_ttft",
        type=float,
        default=None,
        metavar="S",
        help="expected time to first token for requests that set none, seconds (default 1.0)",
    )
    add_deprecated_alias(parser, "--default-ttft", "--ttft", dest="default_ttft", type=float)
    parser.add_argument(
        "--tds",
        dest="default_tds",
        type=float,
        default=None,
        metavar="TOK_S",
        help="reading pace for requests that set none, tokens/s (default 4.8)",
    )
    add_deprecated_alias(parser, "--default-tds", "--tds", dest="default_tds", type=float)
    parser.add_argument(
        "--max-model-len", type=int, default=2048, help="tokens (default: %(default)s)"
    )
    parser.add_argument(
        "--max-num-seqs", type=int, default=None, help="batch limit (vLLM's default)"
    )
    parser.add_argument(
        "--kv-cache-gb",
        type=float,
        default=1.0,
        help="KV-cache size in GiB (whole GiB on the CPU build; default: %(default)s)",
    )
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        help="skip graph compilation: faster start, slower steps",
    )
    parser.add_argument(
        "--slack-port",
        type=int,
        default=None,
        metavar="PORT",
        help="listen for the gateway's slack reports on this port (0: any free port, advertised "
        "under ~/.cache/andes/slack; ANDES_SLACK_HOST / ANDES_SLACK_SECRET in the environment "
        "set the address and a shared secret); default: no slack channel",
    )
    parser.add_argument(
        "--prepare-model",
        action="store_true",
        help="prepare the bundled model (convert once, cached) and exit",
    )
    parser.add_argument(
        "--print-command",
        action="store_true",
        help="print the server command and environment instead of running it",
    )
    parser.add_argument(
        "vllm_args",
        nargs=argparse.REMAINDER,
        help="after '--': options passed to vLLM's server unchanged",
    )


def scheduler_settings(env: Mapping[str, str], **flags: object) -> SchedulerSettings:
    """The scheduler's settings: the ``ANDES_*`` environment, then the flags given over it.

    The engine core reads the same environment; merging it here lets :func:`preflight` check
    what the engine will run (``ANDES_POLICY_OPTIONS`` included) before it starts."""
    return dataclasses.replace(SchedulerSettings.from_env(env), **flags)  # type: ignore[arg-type]


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The :class:`EngineConfig` the options describe (validated)."""
    scheduler_kwargs: dict[str, object] = {}
    if args.policy is not None:
        scheduler_kwargs["policy"] = args.policy
    if args.delta_t is not None:
        scheduler_kwargs["delta_t_s"] = args.delta_t
    if args.default_ttft is not None:
        scheduler_kwargs["default_ttft_s"] = args.default_ttft
    if args.default_tds is not None:
        scheduler_kwargs["default_tds_tok_s"] = args.default_tds
    extra = list(args.vllm_args or ())
    if extra and extra[0] == "--":
        extra = extra[1:]
    return EngineConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        stock=args.stock,
        scheduler=scheduler_settings(os.environ, **scheduler_kwargs),
        max_model_len=args.max_model_len,
        kv_cache_gb=args.kv_cache_gb,
        enforce_eager=args.enforce_eager,
        max_num_seqs=args.max_num_seqs,
        served_model_name=args.served_model_name,
        extra_args=tuple(extra),
        slack_port=args.slack_port,
    )


def preflight(config: EngineConfig) -> None:
    """Check the policy and the vLLM version here, in a second and with a clear message, rather
    than fail inside vLLM's engine-core process after the model loaded. Neither check imports
    vLLM (tens of seconds). Raises ``RuntimeError``/``ValueError``."""
    if not config.stock:
        from engine.vllm.settings import load_policy
        from engine.vllm.version import check_vllm_version

        try:
            load_policy(config.scheduler)
        except (TypeError, ValueError) as exc:
            if not config.scheduler.policy_options:
                raise
            raise ValueError(f"ANDES_POLICY_OPTIONS: {exc}") from None
        check_vllm_version()


def run(args: argparse.Namespace) -> int:
    """Prepare the model if bundled, then exec vLLM's server."""
    if args.prepare_model:
        print(prepare_bundled_model())
        return 0
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"andes engine: {exc}", file=sys.stderr)
        return 2
    try:
        preflight(config)
    except (RuntimeError, ValueError) as exc:
        print(f"andes engine: {exc}", file=sys.stderr)
        return 2
    cmd = config.command(resolve_model(config.model))
    env = config.environment()
    if args.print_command:
        shown = {k: v for k, v in env.items() if k.startswith(("ANDES_", "VLLM_", "PYTHONPATH"))}
        for key, value in sorted(shown.items()):
            print(f"{key}={value}")
        print(" ".join(cmd))
        return 0
    print(
        f"andes engine: serving {config.served_name()!r} on http://{config.host}:{config.port}/v1",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
    return 0  # not reached
