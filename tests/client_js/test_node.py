"""Runs the JavaScript tests (client_js/test/, node's built-in runner) so one pytest run covers
them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")
CLIENT_JS = Path(__file__).resolve().parents[2] / "client_js"


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_client_js_node_tests() -> None:
    proc = subprocess.run([NODE, "--test", "test/"], cwd=CLIENT_JS, capture_output=True,  # type: ignore[list-item]
                          text=True, timeout=120)
    summary = "\n".join(line for line in proc.stdout.splitlines()
                        if line.startswith(("not ok", "# pass", "# fail")))
    assert proc.returncode == 0, (
        f"node --test failed:\n{summary}\n{proc.stdout[-6000:]}{proc.stderr}")
    assert "# fail 0" in proc.stdout and "# pass " in proc.stdout
