"""The demo page as a new user meets it, in real headless Chromium against a real gateway in front
of the scripted engine: both transports out of the box (no model given), an API key from
``?api_key=`` or the key field, a 390 px wide phone, the live pace and QoE line, Markdown rendered
safely while it is paced, reduced motion, and a Stop counted as a cancel.

The browser is driven over the DevTools protocol (tests/client_js/cdp.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cdp import Browser, Page, find_chromium
from support.fixtures import Running
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

ENDED = "window.andesDemo.results.length + window.andesDemo.errors.length"


def words(n: int) -> list[str]:
    return [f"word{k} " for k in range(n)]


async def open_demo(browser: Browser, url: str, *, width: int = 1100, height: int = 760,
                    reduced_motion: bool = False) -> Page:
    page = await browser.new_page(width=width, height=height)
    if reduced_motion:
        await page.send("Emulation.setEmulatedMedia", features=[
            {"name": "prefers-reduced-motion", "value": "reduce"}])
    await page.send("Page.navigate", url=url)
    await page.wait_for("window.andesDemo !== undefined && document.readyState === 'complete'")
    return page


async def ask(page: Page, text: str) -> None:
    await page.eval(f"document.getElementById('prompt').value = {text!r};"
                    "document.getElementById('send').click(); true")


async def demo(page: Page) -> dict[str, Any]:
    return await page.eval("window.andesDemo")  # type: ignore[no-any-return]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_both_transports_work_out_of_the_box(gateway: Running, upstream: ScriptedEngine,
                                                   browser: Browser, transport: str) -> None:
    # No ?model=: the SSE transport once sent none ("model must be a non-empty string").
    upstream.script = Script(tokens=words(6))
    page = await open_demo(browser, f"{gateway.url}/?tds=40&transport={transport}")
    await ask(page, "Hello?")
    await page.wait_for(ENDED, 30)
    state = await demo(page)
    assert not state["errors"], (state["errors"], page.console, page.exceptions)
    assert state["results"][0]["text"] == "".join(words(6))
    assert upstream.records[-1].body["model"] == "test-model"


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_api_key_from_the_address_or_the_key_field(make_gateway, upstream: ScriptedEngine,
                                                         browser: Browser, transport: str) -> None:
    gw = await make_gateway(api_keys=("k-secret",))
    upstream.script = Script(tokens=words(4))
    page = await open_demo(browser, f"{gw.url}/?tds=40&transport={transport}")
    await ask(page, "Hello?")
    await page.wait_for(ENDED, 30)
    state = await demo(page)
    assert state["errors"][0]["code"] == "unauthorized", state
    # The page says what to do and opens the key field.
    assert await page.eval("document.getElementById('key-box').open")
    assert "API key" in await page.eval("document.getElementById('status').textContent")
    await page.eval("const k = document.getElementById('api-key'); k.value = 'k-secret';"
                    "k.dispatchEvent(new Event('change')); true")
    await ask(page, "Hello again?")
    await page.wait_for("window.andesDemo.results.length", 30)
    assert (await demo(page))["results"][0]["text"] == "".join(words(4))

    page = await open_demo(browser, f"{gw.url}/?api_key=k-secret&tds=40&transport={transport}")
    # The key is taken and leaves the address bar (and the history, and any shared link).
    assert await page.eval("location.search") == f"?tds=40&transport={transport}"
    await ask(page, "Hello?")
    await page.wait_for(ENDED, 30)
    state = await demo(page)
    assert not state["errors"] and state["results"][0]["text"] == "".join(words(4)), state


async def test_a_390px_phone_sees_every_control_and_no_sideways_scroll(
        gateway: Running, upstream: ScriptedEngine, browser: Browser) -> None:
    long_word = "supercalifragilistic" * 6
    upstream.script = Script(tokens=["Here ", f"{long_word} ", "is code:\n\n", "```\n",
                                     "x = " + "1 + " * 40 + "1\n", "```\n", "done."],
                             gap_s=0.05)
    page = await open_demo(browser, f"{gateway.url}/?tds=10", width=390, height=844)
    await ask(page, "A long answer " + "with many words " * 20)
    await page.wait_for("window.andesDemo.shown >= 3", 30)
    await page.screenshot(ARTIFACTS / "demo_page_390px_streaming.png")
    await page.wait_for(ENDED, 30)
    await page.screenshot(ARTIFACTS / "demo_page_390px.png")
    layout = await page.eval("""(() => {
        const box = (id) => { const r = document.getElementById(id).getBoundingClientRect();
                              return [r.left, r.right, r.top, r.bottom]; };
        return {width: innerWidth, height: innerHeight,
                scroll: document.documentElement.scrollWidth,
                body: document.body.scrollWidth,
                boxes: Object.fromEntries(['stop', 'send', 'transport', 'pace', 'prompt',
                                           'key-box'].map((id) => [id, box(id)]))};
    })()""")
    assert layout["width"] == 390
    assert layout["scroll"] <= 390 and layout["body"] <= 390, layout
    for name, (left, right, top, bottom) in layout["boxes"].items():
        assert left >= 0 and right <= 390, (name, layout)
        assert top >= 0 and bottom <= layout["height"], (name, layout)
    # The code block scrolls inside itself instead of widening the page.
    assert await page.eval("(() => { const p = document.querySelector('.msg.assistant pre');"
                           " return p.scrollWidth > p.clientWidth"
                           " && p.getBoundingClientRect().right <= 390; })()")


async def test_live_pace_and_qoe_while_streaming(gateway: Running, upstream: ScriptedEngine,
                                                 browser: Browser) -> None:
    upstream.script = Script(tokens=words(60), gap_s=0.02)
    page = await open_demo(browser, f"{gateway.url}/?tds=6")
    await ask(page, "Go on.")
    await page.wait_for("window.andesDemo.shown >= 3", 30)
    line = await page.eval("document.getElementById('live').textContent")
    assert "reading at 6.0 tok/s" in line and "QoE so far" in line, line
    live = (await demo(page))["live"]
    assert live["qoe"] is not None and 0 <= live["qoe"] <= 1 and live["shown"] >= 3
    await page.eval("const s = document.getElementById('pace'); s.value = '20';"
                    "s.dispatchEvent(new Event('input')); true")
    await page.wait_for("document.getElementById('live').textContent.includes('20.0 tok/s')", 10)
    await page.wait_for(ENDED, 60)
    assert await page.eval("document.getElementById('live').hidden")


async def test_markdown_is_rendered_safely_and_still_paced(gateway: Running,
                                                          upstream: ScriptedEngine,
                                                          browser: Browser) -> None:
    tokens = ["Some ", "**bold", " words** ", "and ", "`code`. ",
              '<img src=x onerror="window.pwned=1">', " ", "[a link](javascript:window.pwned=2) ",
              "<script>window.pwned=3</script>", "\n\n", "- one\n", "- two\n", *words(20)]
    upstream.script = Script(tokens=tokens, gap_s=0.02)
    page = await open_demo(browser, f"{gateway.url}/?tds=10")
    await ask(page, "Show me Markdown.")
    shown: set[int] = set()
    while not await page.eval(ENDED):
        shown.add(await page.eval("window.andesDemo.shown"))
        if len(shown) > 3:
            strong = await page.eval("document.querySelectorAll('#log strong').length")
            assert strong <= 1
    state = await demo(page)
    assert not state["errors"], state
    assert len(shown) >= 8, shown  # still revealed token by token
    dom = await page.eval("""(() => ({
        strong: [...document.querySelectorAll('#log .msg.assistant strong')]
                .map(e => e.textContent),
        code: [...document.querySelectorAll('#log .msg.assistant code')].map(e => e.textContent),
        items: [...document.querySelectorAll('#log .msg.assistant li')].map(e => e.textContent),
        imgs: document.querySelectorAll('#log img, #log script').length,
        links: [...document.querySelectorAll('#log a')].map(a => a.getAttribute('href')),
        pwned: window.pwned ?? null,
        text: document.querySelector('#log .msg.assistant .text').textContent}))()""")
    assert dom["strong"] == ["bold words"] and dom["code"] == ["code"]
    assert dom["items"][:2] == ["one", "two"]
    assert dom["imgs"] == 0 and dom["links"] == [] and dom["pwned"] is None, dom
    assert '<img src=x onerror="window.pwned=1">' in dom["text"]  # shown as the text it is


async def test_an_error_that_quotes_markup_is_shown_as_text(gateway: Running, browser: Browser
                                                            ) -> None:
    page = await open_demo(browser, f"{gateway.url}/?model=%3Cimg%20src%3Dx%20onerror%3D"
                                    f"%22window.pwned%3D1%22%3E")
    await ask(page, "Hello?")
    await page.wait_for(ENDED, 30)
    assert (await demo(page))["errors"], "the unknown model must be refused"
    assert await page.eval("document.querySelectorAll('#log img').length") == 0
    assert await page.eval("window.pwned ?? null") is None
    assert "<img" in await page.eval("document.querySelector('#log .stats').textContent")


async def test_reduced_motion(gateway: Running, upstream: ScriptedEngine,
                              browser: Browser) -> None:
    upstream.script = Script(tokens=words(30), gap_s=0.02)
    cursor = ("(() => { const t = document.querySelector('.msg.assistant.streaming .text"
              " > :last-child'); return t ? getComputedStyle(t, '::after').animationName"
              " : null; })()")
    for reduce, frame_s, animation in ((False, 1 / 60, "blink"), (True, 0.25, "none")):
        page = await open_demo(browser, f"{gateway.url}/?tds=8", reduced_motion=reduce)
        await ask(page, "Hello?")
        assert await page.wait_for(cursor, 30) == animation
        state = await demo(page)
        assert state["reducedMotion"] is reduce and state["frameS"] == pytest.approx(frame_s)
        await page.wait_for(ENDED, 60)
        assert not (await demo(page))["errors"]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_stop_is_counted_as_a_cancel(gateway: Running, upstream: ScriptedEngine,
                                           browser: Browser, transport: str) -> None:
    upstream.script = Script(tokens=words(400), gap_s=0.02)
    page = await open_demo(browser, f"{gateway.url}/?tds=5&transport={transport}")
    await ask(page, "A long answer, please.")
    await page.wait_for("window.andesDemo.shown >= 2", 30)
    await page.eval("document.getElementById('stop').click(); true")
    await page.wait_for(ENDED, 30)
    assert (await demo(page))["errors"][0]["code"] == "cancelled"
    await upstream.wait_for(lambda u: u.cancelled == 1)

    async def metrics() -> str:
        async with aiohttp.ClientSession() as s, s.get(gateway.url + "/metrics") as resp:
            return await resp.text()

    async def counted() -> bool:
        return 'reason="cancelled"} 1.0' in await metrics()

    await until(counted, "the Stop counted as a cancel", timeout_s=10)
    assert 'reason="disconnected"' not in await metrics()
