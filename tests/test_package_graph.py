"""The packages' dependency graph: what each top-level package may import, and what importing the
gateway costs (docs/architecture.md draws the layers).

    core   → the standard library only
    slack  → core
    engine → core, slack (vllm only under engine/vllm/)
    gateway → core, slack
    bench  → core, engine, gateway
    andes  → anything (the command line wires the rest together)

Imports are read from the source (``ast``), so one inside a function counts as much as one at
the top of a module: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("andes", "bench", "core", "engine", "gateway", "slack")
ALLOWED = {
    "core": set(),
    "slack": {"core"},
    "engine": {"core", "slack"},
    "gateway": {"core", "slack"},
    "bench": {"core", "engine", "gateway"},
    "andes": {"bench", "core", "engine", "gateway", "slack"},
}
# What the pure parts (QoE math, policies) never import (STYLE.md: no I/O, no frameworks).
PURE = ("core", "engine/policy")
IMPURE = {"torch", "vllm", "aiohttp", "asyncio"}


def imports(path: Path) -> Iterator[str]:
    """The absolute module names ``path`` imports (relative imports resolve inside its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = path.relative_to(ROOT).parent.parts
                base = parts[: len(parts) - node.level + 1]
                yield ".".join([*base, node.module] if node.module else base)
            elif node.module:
                yield node.module


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def package_edges() -> dict[str, dict[str, list[str]]]:
    """{package: {package it imports: [files that do]}} between the top-level packages."""
    edges: dict[str, dict[str, list[str]]] = {p: {} for p in PACKAGES}
    for package in PACKAGES:
        for path in sources(package):
            for module in imports(path):
                top = module.split(".")[0]
                if top in PACKAGES and top != package:
                    edges[package].setdefault(top, []).append(str(path.relative_to(ROOT)))
    return edges


def test_every_package_has_sources() -> None:
    for package in PACKAGES:
        assert sources(package), f"no Python file under {package}/"


def test_the_package_graph_is_acyclic_and_layered() -> None:
    edges = package_edges()
    try:
        order = list(TopologicalSorter({p: set(deps) for p, deps in edges.items()}).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle between packages: {exc.args[1]}")
    assert set(order) == set(PACKAGES)
    for package, deps in edges.items():
        extra = {dep: files for dep, files in deps.items() if dep not in ALLOWED[package]}
        assert not extra, f"{package} must not import {sorted(extra)}; from: {extra}"


def test_vllm_is_imported_only_under_engine_vllm() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in sources(package)
        if any(m.split(".")[0] == "vllm" for m in imports(path))
        and not path.is_relative_to(ROOT / "engine" / "vllm")
    ]
    assert offenders == []


@pytest.mark.parametrize("folder", PURE)
def test_the_pure_parts_import_no_framework(folder: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(found)
        for path in sources(folder)
        if (found := {m.split(".")[0] for m in imports(path)} & IMPURE)
    }
    assert offenders == {}


def test_importing_the_gateway_loads_no_numpy_and_no_policy() -> None:
    # A fresh interpreter: the gateway, plus what it does on its hot path (encoding frames,
    # building a slack record), must not drag in numpy or the scheduling policies.
    probe = (
        "import json, sys\n"
        "import gateway.app\n"
        "from gateway import protocol as p\n"
        "from core.slack import SlackRecord\n"
        "p.encode(p.Done('stop', p.Usage(1, 2, 3), 0.5, 0.25, 2), p.MSGPACK_SUBPROTOCOL)\n"
        "p.encode(p.Done('stop', p.Usage(1, 2, 3), 0.5, 0.25, 2), p.JSON_SUBPROTOCOL)\n"
        "SlackRecord('s', 2, 1, 4.0, False, 0.0).slack_s(0.0)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout  # fmt: skip
    loaded = set(json.loads(out))
    assert "gateway.app" in loaded
    assert "numpy" not in loaded
    assert not {m for m in loaded if m == "engine" or m.startswith(("engine.", "bench."))}
    assert "engine.policy.andes" not in loaded
