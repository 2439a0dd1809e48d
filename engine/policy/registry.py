"""Policies by name: ``get_policy("andes", horizon_s=3)``.

The built-in policies are imported on first use, not when this module (or ``engine.policy``) is:
``andes`` needs numpy, and a process that only wants ``fcfs`` or the contract should not pay for
it. A plug-in policy registers itself with :func:`register_policy` when its module is imported
(``andes engine --policy pkg.module:name`` imports ``pkg.module`` first).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from engine.policy.base import Policy

__all__ = ["available_policies", "build_config", "get_policy", "register_policy"]

_BUILTIN = {
    "andes": "engine.policy.andes",
    "fcfs": "engine.policy.fcfs",
    "lqf": "engine.policy.lqf",
    "round_robin": "engine.policy.round_robin",
}
_REGISTRY: dict[str, Callable[..., Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make ``cls`` available to :func:`get_policy` under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def get_policy(name: str, **options: object) -> Policy:
    """Build the policy registered as ``name`` with keyword ``options``."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; choose one of {', '.join(available_policies())}"
        ) from None
    return factory(**options)


def available_policies() -> list[str]:
    """Every policy :func:`get_policy` can build: the built-in ones and any registered."""
    return sorted(_BUILTIN.keys() | _REGISTRY.keys())


def build_config(config_cls: type, policy: str, options: dict[str, object]) -> object:
    """Build a policy's frozen config from keyword ``options``, naming any unknown option.

    Policies call this from ``__init__`` so ``get_policy("fcfs", bogus=1)`` fails with a message
    that quotes the bad name and lists the valid ones (a bare ``TypeError`` from the dataclass
    would not).
    """
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for policy {policy!r}; "
            f"valid options: {', '.join(sorted(valid)) or '(none)'}"
        )
    return config_cls(**options)
