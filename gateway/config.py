"""The gateway's configuration: one frozen dataclass, loaded once, validated once.

Sources, highest precedence first: command-line flags, environment variables
(``ANDES_GATEWAY_<FIELD>``, e.g. ``ANDES_GATEWAY_PORT=8080``, lists comma-separated), a TOML or JSON
file (``--config FILE``; keys are the field names below), then the defaults. Every error names the
field, the source and the bad value.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

__all__ = ["ENV_PREFIX", "ConfigError", "GatewayConfig", "load_config"]

ENV_PREFIX = "ANDES_GATEWAY_"


class ConfigError(ValueError):
    """A bad configuration value; the message quotes it and says where it came from."""


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Everything the gateway needs to run. See ``andes gateway --help`` for each field."""

    upstreams: tuple[str, ...] = ()  # base URLs of OpenAI-compatible engines (with or without /v1)
    upstream_api_key: str | None = None  # sent upstream as a Bearer token
    send_vllm_xargs: Literal["auto", "on", "off"] = "auto"  # QoE + stream id in `vllm_xargs`
    upstream_connect_timeout_s: float = 10.0  # connecting to the engine
    # A stopped engine still accepts connections (the kernel does): these bound what follows.
    upstream_first_byte_timeout_s: float = 30.0  # request sent -> the engine's response starts
    upstream_stall_timeout_s: float = 60.0  # longest silence of a started engine stream
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()  # accepted client keys; empty = no authentication
    # Web pages at these origins may open the WebSocket ("*" = any); the gateway's own origin
    # always may. A browser sends Origin; programs usually do not, and are not affected.
    allowed_origins: tuple[str, ...] = ()
    request_timeout_s: float = 15.0  # a request's headers and body must arrive within this
    ttft_s: float = 1.0  # default expected time to first token, seconds
    tds_tok_s: float = 4.8  # default reading pace, tokens/s
    pacing: Literal["server", "client", "off"] = "server"  # default pacing
    frame_s: float = 0.05  # coalesce paced text into at most one write per frame
    word_boundary: bool = True  # do not end a paced write mid-word
    models: tuple[str, ...] = ()  # served model names (allow-list); empty = the upstreams' models
    max_body_bytes: int = 1 << 20  # largest HTTP body or WebSocket frame
    max_tokens: int = 8192  # largest max_tokens a request may ask for
    max_concurrent_streams: int = 10_000  # streams open at once (HTTP + WebSocket)
    max_buffered_tokens: int = 16_384  # per stream: tokens received but not yet sent
    max_buffered_bytes: int = 1 << 18  # per stream: UTF-8 bytes of those tokens
    slow_reader_timeout_s: float = 30.0  # a write blocked this long ends the stream
    keepalive_s: float = 15.0  # `: ping` comment on a silent SSE stream
    shutdown_grace_s: float = 10.0  # on shutdown, live streams get this long to finish
    workers: int = 1  # processes sharing the port (SO_REUSEPORT); see gateway/workers.py
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Slack reporting to the engine's scheduler (slack/sender.py): explicit ws:// endpoints,
    # else the adverts of upstreams on this host (slack/discovery.py).
    slack_urls: tuple[str, ...] = ()
    slack_discovery: bool = True
    slack_secret: str | None = None  # the engine's ANDES_SLACK_SECRET
    slack_interval_s: float = 0.075  # one batch of every live stream's slack per interval
    # Model aliases: "public=upstream-id" (e.g. "smollm2=/models/SmolLM2.Q4_1.gguf").
    model_aliases: tuple[str, ...] = ()
    # QoE scheduling in front of engines Andes does not control (gateway/admission.py).
    admission: bool = True  # hold new streams in a QoE-ordered queue when upstreams are full
    # auto: park where the continuation is exact by construction (token ids) and the start-up
    # probe agreed; text: also where a text continuation passed the probe (llama-cpp-python),
    # which re-tokenizes and re-prefills at the seam and measurably changes parked texts.
    parking: Literal["auto", "text", "off"] = "auto"
    routing: Literal["qoe", "least_busy"] = "qoe"  # how replicas are chosen
    queue_max: int = 1024  # streams waiting in the gateway's queue at most; more get 429
    queue_timeout_s: float = 60.0  # a stream queued longer gets 429
    # A stream queued this long goes first, oldest first; 0: never (value alone; admission.py's
    # SchedulerConfig.starvation_s says why that is the default).
    queue_starvation_s: float = 0.0
    sched_horizon_s: float = 3.0  # the QoE valuation's look-ahead, seconds
    sched_interval_s: float = 0.1  # how often the queue and parked streams are reconsidered
    park_min_slack_s: float = 6.0  # park a stream only with this much buffered for its reader
    park_min_run_s: float = 1.0  # a (re)started stream runs this long before it may be parked
    park_budget: float = 0.02  # share of an upstream's time resumes may take; 1 = no limit
    max_upstream_streams: int = 0  # hard limit of requests in flight per upstream; 0 = learned
    health_interval_s: float = 2.0  # how often each upstream's GET /v1/models is checked

    def __post_init__(self) -> None:
        for url in self.upstreams:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"upstreams: {url!r} is not an http:// or https:// URL")
        _choice("send_vllm_xargs", self.send_vllm_xargs, ("auto", "on", "off"))
        _choice("pacing", self.pacing, ("server", "client", "off"))
        _choice("log_format", self.log_format, ("text", "json"))
        _choice("log_level", self.log_level, ("debug", "info", "warning", "error"))
        self._check_scheduling()
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be within [0, 65535], got {self.port!r}")
        _positive("tds_tok_s", self.tds_tok_s)
        _positive("upstream_connect_timeout_s", self.upstream_connect_timeout_s)
        self._check_edges()
        _positive("slow_reader_timeout_s", self.slow_reader_timeout_s)
        _positive("keepalive_s", self.keepalive_s)
        if not (math.isfinite(self.ttft_s) and self.ttft_s >= 0):
            raise ConfigError(f"ttft_s must be a finite number >= 0, got {self.ttft_s!r}")
        if not (math.isfinite(self.frame_s) and 0 <= self.frame_s <= 1):
            raise ConfigError(f"frame_s must be within [0, 1] seconds, got {self.frame_s!r}")
        if not (math.isfinite(self.shutdown_grace_s) and self.shutdown_grace_s >= 0):
            raise ConfigError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s!r}")
        for name in ("max_body_bytes", "max_tokens", "max_concurrent_streams",
                     "max_buffered_tokens", "max_buffered_bytes", "workers",
                     "queue_max"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if any(not k for k in self.api_keys):
            raise ConfigError("api_keys: an API key must not be empty")
        for url in self.slack_urls:
            if not url.startswith(("ws://", "wss://")):
                raise ConfigError(f"slack_urls: {url!r} is not a ws:// or wss:// URL")
        if self.slack_secret is not None and not self.slack_secret:
            raise ConfigError("slack_secret must not be empty (leave it unset for none)")
        if not (math.isfinite(self.slack_interval_s) and 0 < self.slack_interval_s <= 10):
            raise ConfigError(
                f"slack_interval_s must be within (0, 10] seconds, got {self.slack_interval_s!r}"
            )

    def _check_scheduling(self) -> None:
        _choice("parking", self.parking, ("auto", "text", "off"))
        _choice("routing", self.routing, ("qoe", "least_busy"))
        for name in ("queue_timeout_s", "sched_horizon_s", "sched_interval_s",
                     "health_interval_s"):
            _positive(name, getattr(self, name))
        for name in ("queue_starvation_s", "park_min_slack_s", "park_min_run_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if not (math.isfinite(self.park_budget) and 0 < self.park_budget <= 1):
            raise ConfigError(f"park_budget must be within (0, 1], got {self.park_budget!r}")
        if self.max_upstream_streams < 0:
            raise ConfigError(
                f"max_upstream_streams must be >= 0, got {self.max_upstream_streams!r}")
        self.alias_map()  # validates

    def alias_map(self) -> dict[str, str]:
        """``model_aliases`` as {public name: upstream id}."""
        out: dict[str, str] = {}
        for entry in self.model_aliases:
            public, sep, target = entry.partition("=")
            if not sep or not public.strip() or not target.strip():
                raise ConfigError(f"model_aliases: {entry!r} is not PUBLIC=UPSTREAM_ID")
            if public.strip() in out:
                raise ConfigError(f"model_aliases: {public.strip()!r} is given twice")
            out[public.strip()] = target.strip()
        return out

    def _check_edges(self) -> None:
        """The timeouts and origins that bound what clients and engines can make it wait for."""
        for name in ("upstream_first_byte_timeout_s", "upstream_stall_timeout_s",
                     "request_timeout_s"):
            _positive(name, getattr(self, name))
        for origin in self.allowed_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"allowed_origins: {origin!r} is not * or an http(s):// origin")

    def redacted(self) -> dict[str, Any]:
        """The configuration for logs: secrets replaced by their count."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["api_keys"] = f"<{len(self.api_keys)} keys>"
        out["upstream_api_key"] = "<set>" if self.upstream_api_key else None
        out["slack_secret"] = "<set>" if self.slack_secret else None
        return out


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


# -- loading ------------------------------------------------------------------------------------

_ALIASES = {"upstream": "upstreams", "api_key": "api_keys", "model": "models",
            "model_alias": "model_aliases"}


def _kind(name: str) -> str:
    annotation = str(GatewayConfig.__dataclass_fields__[name].type)
    for kind in ("tuple", "bool", "int", "float"):
        if annotation.startswith(kind):
            return kind
    return "str"


def _coerce(name: str, value: Any, source: str) -> Any:
    """Turn a value from a file (typed) or the environment (text) into the field's type."""
    kind = _kind(name)
    try:
        if kind == "tuple":
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ValueError("expected a list of strings")
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if value is None or isinstance(value, str):
            return value
        raise ValueError("expected a string")
    except ValueError as exc:
        raise ConfigError(f"{name} ({source}): {value!r} is not valid: {exc}") from None


def _read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {str(p)!r}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid "
                          f"{'JSON' if p.suffix == '.json' else 'TOML'}: {exc}") from None
    if isinstance(data.get("gateway"), dict):  # allow a [gateway] table in a shared file
        data = data["gateway"]
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a table/object of settings")
    return data


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    file: str | Path | None = None,
) -> GatewayConfig:
    """Merge flags > environment > file > defaults into a validated :class:`GatewayConfig`.

    ``flags`` maps field names to values, ``None`` meaning "not given". ``env`` is usually
    ``os.environ``; only ``ANDES_GATEWAY_*`` variables are read. ``file`` is TOML, or JSON when it
    ends in ``.json``; unknown keys in it are errors (a typo should not pass silently).
    """
    known = set(GatewayConfig.__dataclass_fields__)
    values: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if file is not None:
        layers.append((f"config file {str(file)!r}", _read_file(file)))
    if env is not None:
        layers.append(("environment", {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                                       if k.startswith(ENV_PREFIX)}))
    if flags is not None:
        layers.append(("flag", {k: v for k, v in flags.items() if v is not None}))
    for source, layer in layers:
        for key, value in layer.items():
            name = _ALIASES.get(key, key).replace("-", "_")
            if name not in known:
                if source == "flag":
                    continue  # other subcommand options share the namespace
                raise ConfigError(f"{source}: unknown setting {key!r}")
            values[name] = _coerce(name, value, source)
    try:
        return GatewayConfig(**values)
    except TypeError as exc:  # pragma: no cover - guarded by _coerce
        raise ConfigError(str(exc)) from None
