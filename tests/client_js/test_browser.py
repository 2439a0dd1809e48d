"""The demo page in real headless Chromium, against a real gateway in front of the scripted engine.

The browser is driven over the DevTools protocol (tests/client_js/cdp.py). The gateway runs in this
test's event loop, so the test also sees what reached it: a spy wraps ``Stream.ack``/``pause``/
``resume`` (the real methods still run) and the stream's slack record is read while it streams.

The hidden page is real: opening a second tab makes headless Chromium hide the first one
(``document.visibilityState`` becomes "hidden" and ``visibilitychange`` fires), and
``Page.bringToFront`` shows it again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from cdp import Browser, Page, find_chromium
from support.fixtures import Running
from support.spy import StreamSpy
from support.wait import until

from bench.scripted_engine import Script, ScriptedEngine

CHROMIUM = find_chromium()
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (run "
                       "scripts/install_browser.sh, or set ANDES_CHROMIUM to its path)"),
]


def words(n: int) -> list[str]:
    return [f"word{k} " for k in range(n)]


async def open_demo(browser: Browser, url: str) -> Page:
    page = await browser.new_page()
    await page.send("Page.navigate", url=url)
    await page.wait_for("window.andesDemo !== undefined && document.readyState === 'complete'")
    return page


async def ask(page: Page, text: str) -> None:
    await page.eval(f"document.getElementById('prompt').value = {text!r};"
                    "document.getElementById('send').click(); true")


SAMPLE = ("[performance.now() / 1000, window.andesDemo.shown,"
          " (document.querySelector('.msg.assistant:last-of-type .text') || {}).textContent || '',"
          " window.andesDemo.results.length, window.andesDemo.errors.length]")


async def test_demo_page_streams_at_the_chosen_pace_and_acks(
        gateway: Running, upstream: ScriptedEngine, browser: Browser, spy: StreamSpy) -> None:
    url = gateway.url
    tds, n = 8.0, 48
    upstream.script = Script(tokens=words(n), gap_s=0.05)  # the engine: 20 tok/s, 2.4 s
    page = await open_demo(browser, f"{url}/?tds={tds:g}")
    await ask(page, "Tell me about pacing.")

    samples: list[tuple[float, int]] = []  # (page time, tokens shown)
    shown_when_engine_done: int | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 40
    while loop.time() < deadline:
        t, shown, text, results, errors = await page.eval(SAMPLE)
        samples.append((t, shown))
        if shown_when_engine_done is None and upstream.records and upstream.records[0].finished:
            shown_when_engine_done = shown
        if results or errors:
            break
        if len(samples) == 20:
            await page.screenshot(ARTIFACTS / "demo_page_streaming.png")
        await asyncio.sleep(0.1)
    demo = await page.eval("window.andesDemo")
    assert not demo["errors"], f"{demo['errors']}; console: {page.console}; {page.exceptions}"
    assert demo["results"], f"no result in time; samples: {samples[-5:]}"
    result = demo["results"][0]
    assert text == "".join(words(n)) == result["text"]
    assert result["tokens"] == n
    await page.screenshot(ARTIFACTS / "demo_page.png")

    # Progressive, at the chosen pace: many intermediate states; never faster than the pace
    # (a lower bound on the duration, which load can only lengthen); the engine finished long
    # before the reader, so the pacing happened in the page.
    shown = [s for _, s in samples]
    assert len({s for s in shown if 0 < s < n}) >= 10, shown
    first = next(t for t, s in samples if s > 0)
    last = next(t for t, s in samples if s == n)
    assert last - first >= 0.8 * (n - 1) / tds, (first, last)
    for t, s in samples:
        assert s <= 2 + (t - first) * tds * 1.1 + 1, f"{s} tokens shown {t - first:.2f} s in"
    assert shown_when_engine_done is not None and shown_when_engine_done <= n - 8, (
        shown_when_engine_done)

    # The page asked for client pacing, and its acknowledgements reached the gateway: several,
    # increasing, never beyond what was sent.
    body = upstream.records[0].body
    assert body["vllm_xargs"]["andes_tds"] == tds
    sid = result["streamId"]
    acks = spy.of(sid, "ack")
    assert len(acks) >= 3, spy.calls
    assert acks == sorted(acks) and 0 < acks[-1] <= n
    assert 0 <= result["qoe"] <= 1 and 0 <= result["shownQoE"] <= 1
    stats = await page.eval("document.querySelector('.msg.assistant .stats').textContent")
    assert "QoE" in stats and "TTFT" in stats


async def test_live_pace_change_reaches_the_gateway(
        gateway: Running, upstream: ScriptedEngine, browser: Browser, spy: StreamSpy) -> None:
    url = gateway.url
    upstream.script = Script(tokens=words(40), gap_s=0.05)
    page = await open_demo(browser, f"{url}/?tds=4")
    await ask(page, "Faster, please.")
    await page.wait_for("window.andesDemo.shown >= 2")
    await page.eval("const s = document.getElementById('pace'); s.value = '30';"
                    "s.dispatchEvent(new Event('input')); true")
    await page.wait_for("window.andesDemo.results.length + window.andesDemo.errors.length", 30)
    demo = await page.eval("window.andesDemo")
    assert not demo["errors"], demo["errors"]
    assert spy.of(demo["results"][0]["streamId"], "set_pace") == [30.0]


async def test_hidden_page_pauses_the_stream_at_the_gateway(
        gateway: Running, upstream: ScriptedEngine, browser: Browser, spy: StreamSpy) -> None:
    url, gw = gateway.url, gateway.state
    n = 80
    upstream.script = Script(tokens=words(n), gap_s=0.05)  # 4 s of engine time
    page = await open_demo(browser, f"{url}/?tds=6")
    await ask(page, "A long answer, please.")
    await page.wait_for("window.andesDemo.shown >= 3")
    sid = await page.eval("window.andesDemo.streamId")
    stream = gw.table.streams[sid]
    loop = asyncio.get_running_loop()

    def record():  # what the slack reporter sends for this stream now
        return stream.slack_record(loop.time(), time.time())

    assert record().paused is False

    other = await browser.new_page()  # a second tab: the demo page is now hidden
    assert await page.wait_for("document.visibilityState === 'hidden'")
    await until(lambda: record().paused, "the stream's slack record says paused")
    assert record().paused is True, spy.calls
    assert spy.of(sid, "pause") == [None]
    assert stream.pacer.slack_s(loop.time()) == float("inf")
    frozen = await page.eval("window.andesDemo.shown")
    await asyncio.sleep(1.0)
    assert await page.eval("window.andesDemo.shown") == frozen, "text shown while hidden"
    assert record().paused is True

    await page.send("Page.bringToFront")  # back: the stream resumes
    await page.wait_for("document.visibilityState === 'visible'")
    await page.wait_for(f"window.andesDemo.shown > {frozen}", 10)
    assert spy.of(sid, "resume") == [None]
    await other.close()
    await page.wait_for("window.andesDemo.results.length + window.andesDemo.errors.length", 40)
    demo = await page.eval("window.andesDemo")
    assert not demo["errors"], demo["errors"]
    assert demo["results"][0]["text"] == "".join(words(n))
