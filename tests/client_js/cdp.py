"""Headless Chromium driven over the DevTools protocol with ``websockets`` (no extra packages).

:func:`launch` starts Chromium with a fresh profile and returns a :class:`Browser`; the caller
must ``await browser.close()``, which kills it and removes the profile. :class:`Page` sends
protocol commands (``await page.send("Page.navigate", url=...)``), evaluates JavaScript and keeps
the console messages and uncaught exceptions of the page, for failure messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import websockets

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``$ANDES_CHROMIUM``, else the first Chromium on PATH or in /usr/bin."""
    env = os.environ.get("ANDES_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in CANDIDATES:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK)
                                      else None)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    """A DevTools command failed, or the page threw."""


class Page:
    """One page target over its own DevTools WebSocket."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self._ws:
                msg = json.loads(raw)
                if "id" in msg:
                    fut = self._pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        if "error" in msg:
                            fut.set_exception(CDPError(str(msg["error"])))
                        else:
                            fut.set_result(msg.get("result", {}))
                elif msg.get("method") == "Runtime.consoleAPICalled":
                    args = msg["params"]["args"]
                    self.console.append(" ".join(str(a.get("value", a.get("description")))
                                                 for a in args))
                elif msg.get("method") == "Runtime.exceptionThrown":
                    d = msg["params"]["exceptionDetails"]
                    self.exceptions.append(str(d.get("exception", {}).get("description")
                                               or d.get("text")))

    async def send(self, method: str, **params: Any) -> Any:
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        return await asyncio.wait_for(fut, 30)

    async def eval(self, expression: str, *, await_promise: bool = False) -> Any:
        """Evaluate ``expression`` in the page; its value (JSON-able) or :class:`CDPError`."""
        out = await self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                              awaitPromise=await_promise)
        if "exceptionDetails" in out:
            d = out["exceptionDetails"]
            raise CDPError(str(d.get("exception", {}).get("description") or d.get("text")))
        return out["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 10.0) -> Any:
        """Poll ``expression`` until truthy (a safety timeout, not a timing assertion)."""
        async def poll() -> Any:
            while True:
                value = await self.eval(expression)
                if value:
                    return value
                await asyncio.sleep(0.05)
        try:
            return await asyncio.wait_for(poll(), timeout_s)
        except TimeoutError:
            raise CDPError(f"timed out waiting for {expression!r}; console: {self.console[-10:]}"
                           f"; exceptions: {self.exceptions}") from None

    async def screenshot(self, path: Path) -> None:
        out = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(out["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await self._ws.close()


class Browser:
    def __init__(self, proc: subprocess.Popen[bytes], profile: str, port: int) -> None:
        self.proc = proc
        self.profile = profile
        self.port = port
        self.pages: list[Page] = []

    def _json(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    async def new_page(self, width: int = 1100, height: int = 760) -> Page:
        target = await asyncio.to_thread(self._json, "/json/new?about:blank", "PUT")
        ws = await websockets.connect(target["webSocketDebuggerUrl"], max_size=None)
        page = Page(ws)
        self.pages.append(page)
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)
        return page

    async def close(self) -> None:
        for page in self.pages:
            await page.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait, 5)
        shutil.rmtree(self.profile, ignore_errors=True)


async def launch(executable: str, timeout_s: float = 30.0) -> Browser:
    """Start headless Chromium on a fresh profile; its DevTools port is read from the profile."""
    profile = tempfile.mkdtemp(prefix="andes-chromium-")
    proc = subprocess.Popen(  # its own process group: close() ends it and all its children
        [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    port_file = Path(profile) / "DevToolsActivePort"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or loop.time() > deadline:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            browser = Browser(proc, profile, 0)
            await browser.close()
            raise CDPError(f"Chromium did not start ({executable}): {err}")
        await asyncio.sleep(0.05)
    port = int(port_file.read_text().split()[0])
    if proc.stderr is not None:
        proc.stderr.close()  # never read again: do not let a full pipe block the browser
    return Browser(proc, profile, port)
