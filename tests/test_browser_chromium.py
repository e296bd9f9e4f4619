"""The browser face in a real browser: headless Chromium driven over the DevTools protocol.

Chromium (Debian's ``chromium`` package) opens the home page, fills in and submits the
lookup form, lands on the record page and then on the not-found page; the test checks
the DOM as the browser built it and saves phone-sized screenshots under the test's
temporary directory. Chromium is installed with apt-get when it is missing and this
runs as root; otherwise, or when the install fails, the test is skipped with the reason.

The protocol is spoken over the page's websocket with aiohttp's client: no Selenium,
no Playwright, nothing beyond the project's own dependencies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import RunningNode, TenantFactory

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARKUP = '<b>bold</b> & "quotes"'
EMAIL = "ops@example.com"
# .invalid never resolves: were the "show the record" box ignored, the browser would
# land on an error page here (and the path assertion fail), never on the network.
UNREACHABLE_URL = "https://product.example.invalid/JXDY2106023"
PHONE_WIDTH, PHONE_HEIGHT, PHONE_SCALE = 390, 844, 2
INSTALL_TIMEOUT = 300.0
WAIT = 15.0
"""Bound on every single wait for the browser: a reply, an event, its start."""

APT_LISTS_MISSING = (
    "Unable to locate package",
    "has no installation candidate",
    "Failed to fetch",
    "404  Not Found",
)


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", *args],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
    )


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return (result.stdout + result.stderr).strip()[-600:]


@pytest.fixture(scope="module")
def chromium() -> str:
    """The path of a Chromium binary, installed with apt-get where that is possible."""
    found = _find_chromium()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            "Chromium is not installed and cannot be installed here "
            "(installing Debian's chromium package needs root and apt-get)"
        )
    install = ("install", "-y", "--no-install-recommends", "chromium")
    try:
        result = _apt_get(*install)
        if result.returncode != 0 and any(m in _tail(result) for m in APT_LISTS_MISSING):
            update = _apt_get("update")
            if update.returncode != 0:
                pytest.skip(f"apt-get update failed, cannot install Chromium: {_tail(update)}")
            result = _apt_get(*install)
    except subprocess.TimeoutExpired as exc:
        pytest.skip(f"installing Chromium with apt-get took over {exc.timeout:.0f} s")
    if result.returncode != 0:
        pytest.skip(f"apt-get install chromium failed: {_tail(result)}")
    found = _find_chromium()
    if found is None:
        pytest.skip("apt-get installed chromium but no chromium binary is on PATH")
    return found


class Cdp:
    """A minimal Chrome DevTools Protocol client over one target's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data: dict[str, Any] = orjson.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                async with self._arrived:
                    self.events.append(data)
                    self._arrived.notify_all()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools websocket closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call ``method`` and answer its result; a protocol error fails the test."""
        message_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = future
        await self._ws.send_str(
            orjson.dumps({"id": message_id, "method": method, "params": params}).decode()
        )
        try:
            reply = await asyncio.wait_for(future, WAIT)
        except TimeoutError:
            pytest.fail(f"no DevTools reply to {method} within {WAIT} s")
        assert "error" not in reply, f"{method} failed: {reply['error']}"
        result: dict[str, Any] = reply.get("result", {})
        return result

    def mark(self) -> int:
        """A position in the event log: ``event`` looks only at events after it."""
        return len(self.events)

    async def event(self, method: str, since: int) -> dict[str, Any]:
        """The first ``method`` event received after ``since``, waiting for it if need be."""

        def first() -> dict[str, Any] | None:
            return next((e for e in self.events[since:] if e.get("method") == method), None)

        async def wait() -> dict[str, Any]:
            async with self._arrived:
                await self._arrived.wait_for(lambda: first() is not None)
            found = first()
            assert found is not None
            return found

        try:
            return await asyncio.wait_for(wait(), WAIT)
        except TimeoutError:
            seen = [e.get("method") for e in self.events[since:]]
            pytest.fail(f"no {method} event within {WAIT} s; events since: {seen}")

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression evaluated in the page."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def load(self, action: str, **params: Any) -> dict[str, Any]:
        """Run a navigating command and wait for the new page's load event."""
        since = self.mark()
        await self.send(action, **params)
        await self.event("Page.loadEventFired", since)
        return self.document_response(since)

    def document_response(self, since: int) -> dict[str, Any]:
        """The last main-document response received after ``since``."""
        responses: list[dict[str, Any]] = [
            e["params"]["response"]
            for e in self.events[since:]
            if e.get("method") == "Network.responseReceived" and e["params"]["type"] == "Document"
        ]
        assert responses, "the page loaded without a document response"
        return responses[-1]

    async def close(self) -> None:
        await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def _devtools_port(proc: subprocess.Popen[bytes], profile: Path, log: Path) -> int:
    """The port Chromium chose (``--remote-debugging-port=0``), from its DevToolsActivePort."""
    active = profile / "DevToolsActivePort"
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"Chromium exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if active.exists():
            first_line = active.read_text().split("\n", 1)[0].strip()
            if first_line.isdigit():
                return int(first_line)
        await asyncio.sleep(0.05)
    pytest.fail(f"Chromium did not open its DevTools port within {WAIT} s:\n{log.read_text()}")


@contextlib.asynccontextmanager
async def browser(binary: str, workdir: Path) -> AsyncIterator[Cdp]:
    """Headless Chromium with one blank page, and a DevTools client attached to that page."""
    profile, log = workdir / "chromium-profile", workdir / "chromium.log"
    profile.mkdir()
    args = [
        binary,
        "--headless=new",
        "--no-sandbox",  # root has no sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-proxy-server",
        "--hide-scrollbars",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
    ]
    with log.open("wb") as out:
        # its own process group, so that its helper processes (zygote, renderer) go with it
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    try:
        port = await _devtools_port(proc, profile, log)
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            targets: list[dict[str, Any]] = []
            deadline = time.monotonic() + WAIT
            while not targets and time.monotonic() < deadline:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as r:
                    assert r.status == 200, await r.text()
                    targets = [t for t in await r.json() if t.get("type") == "page"]
                if not targets:
                    await asyncio.sleep(0.05)
            assert targets, "Chromium has no page target"
            ws = await session.ws_connect(
                targets[0]["webSocketDebuggerUrl"], max_msg_size=64 * 2**20
            )
            cdp = Cdp(ws)
            try:
                yield cdp
            finally:
                await cdp.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def screenshot(cdp: Cdp, path: Path) -> bytes:
    shot = await cdp.send("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    path.write_bytes(png)
    print(f"screenshot: {path}")
    assert png.startswith(PNG_SIGNATURE), png[:16]
    assert len(png) > 1024, len(png)
    width, height = (int.from_bytes(png[at : at + 4], "big") for at in (16, 20))
    expected = (PHONE_WIDTH * PHONE_SCALE, PHONE_HEIGHT * PHONE_SCALE)
    assert (width, height) == expected, f"a {width}x{height} screenshot, not the phone view"
    return png


RECORD_DOM = """(() => {
  const rows = [...document.querySelectorAll("table tbody tr")].map(
    (tr) => [...tr.cells].map((td) => td.textContent));
  const link = document.querySelector("table tbody a[rel~=nofollow]");
  const ttl = document.querySelector("table th:nth-child(4)");
  return {
    href: location.href,
    path: decodeURIComponent(location.pathname),
    search: location.search,
    title: document.title,
    h1: document.querySelector("h1")?.textContent ?? null,
    rows,
    boldInTable: document.querySelectorAll("table b").length,
    scripts: document.querySelectorAll("script").length,
    link: link ? link.getAttribute("href") : null,
    viewportWidth: window.innerWidth,
    ttlColumn: ttl ? getComputedStyle(ttl).display : null,
  };
})()"""


# The suite's 60 s bound is for the test itself; installing Chromium (fixture setup) has
# its own bound in the fixture.
@pytest.mark.timeout(60, func_only=True)
async def test_chromium_form_record_page_and_not_found(
    chromium: str, node: RunningNode, tenant: TenantFactory, tmp_path: Path
) -> None:
    t = await tenant()
    h = t.handle("JXDY-browser.1")
    values = [
        {"index": 1, "type": "URL", "data": UNREACHABLE_URL},
        {"index": 2, "type": "DESC", "data": MARKUP},
        {"index": 3, "type": "EMAIL", "data": EMAIL},
    ]
    async with node.session.put(node.api(h), json=values, headers=t.auth) as r:
        assert r.status == 201, await r.text()

    async with browser(chromium, tmp_path) as cdp:
        await cdp.send("Page.enable")
        await cdp.send("Network.enable")
        await cdp.send(
            "Emulation.setDeviceMetricsOverride",
            width=PHONE_WIDTH,
            height=PHONE_HEIGHT,
            deviceScaleFactor=PHONE_SCALE,
            mobile=True,
        )

        home = await cdp.load("Page.navigate", url=f"{node.url}/")
        assert home["status"] == 200, home
        form = await cdp.evaluate(
            """(() => {
              const input = document.querySelector('form input[name="handle"]');
              const box = document.querySelector('form input[type=checkbox][name="noredirect"]');
              return {input: input !== null, box: box !== null, title: document.title};
            })()"""
        )
        assert form == {"input": True, "box": True, "title": "Identifier resolution"}, form

        # fill in the form as a person would, tick "show the record", press Resolve
        since = cdp.mark()
        clicked = await cdp.evaluate(
            f"""(() => {{
              document.querySelector('input[name="handle"]').value = {orjson.dumps(h).decode()};
              document.querySelector('input[name="noredirect"]').checked = true;
              document.querySelector('form button[type="submit"]').click();
              return true;
            }})()"""
        )
        assert clicked is True
        await cdp.event("Page.loadEventFired", since)
        dom: dict[str, Any] = await cdp.evaluate(RECORD_DOM)
        assert dom["path"] == f"/{h}", f"the form led to {dom['href']}"
        assert dom["search"] == "?noredirect", dom
        record = cdp.document_response(since)
        assert record["status"] == 200, record
        assert dom["title"] == h and dom["h1"] == h, dom
        assert ["3", "EMAIL", EMAIL] in [row[:3] for row in dom["rows"]], dom["rows"]
        # the markup arrived as text: shown verbatim, no element made of it
        assert ["2", "DESC", MARKUP] in [row[:3] for row in dom["rows"]], dom["rows"]
        assert dom["boldInTable"] == 0 and dom["scripts"] == 0, dom
        assert dom["link"] == UNREACHABLE_URL, dom  # shown as a link, not followed
        # the phone view: 390 CSS pixels wide, the TTL and timestamp columns hidden
        assert dom["viewportWidth"] == PHONE_WIDTH, dom
        assert dom["ttlColumn"] == "none", dom
        await screenshot(cdp, tmp_path / "record.png")

        missing = t.handle("no-such-identifier")
        not_found = await cdp.load("Page.navigate", url=f"{node.url}/{missing}")
        assert not_found["status"] == 404, not_found
        page = await cdp.evaluate(
            """({title: document.title, h1: document.querySelector("h1")?.textContent ?? null,
                 text: document.querySelector("main")?.textContent ?? ""})"""
        )
        assert page["title"] == "Identifier not found", page
        assert page["h1"] == "Identifier not found", page
        assert f"{missing} is not registered here." in page["text"], page
        await screenshot(cdp, tmp_path / "not-found.png")
