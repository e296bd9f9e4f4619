"""Sessions named by the JSESSIONID cookie, as HANDLE.NET's servlet sessions are."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import handle_client as hc
import pytest

from tests.conftest import URL_VALUE, RunningNode, TenantFactory, running


@pytest.fixture
async def cookie_node(db_url: str, tmp_path: Path, key_dir: Path) -> AsyncIterator[RunningNode]:
    async with running(db_url, tmp_path, key_dir) as node:
        yield node


async def test_a_client_that_keeps_cookies_needs_no_session_header(
    cookie_node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    node = cookie_node
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post(f"{node.url}/api/sessions") as r:
            assert r.status == 201
            started = await r.json()
            cookie = r.cookies["JSESSIONID"]
            assert cookie.value == started["sessionId"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict"
        # the answer names no sessionId: the cookie does
        nonce = hc.unb64(started["nonce"])
        cnonce = b"c" * 16
        answer = hc.seckey_digest(t.secret, nonce, cnonce, "SHA256")
        header = hc.format_authorization(
            version="0",
            id=t.identity,
            type="HS_SECKEY",
            cnonce=hc.b64(cnonce),
            alg="SHA256",
            signature=hc.b64(answer),
        )
        async with http.put(
            f"{node.url}/api/sessions/this", headers={"Authorization": header}
        ) as r:
            body = await r.json()
            assert r.status == 200 and body["authenticated"] is True, body
        # later requests carry only the cookie
        async with http.put(node.api(t.handle("by-cookie")), json=[URL_VALUE]) as r:
            assert r.status == 201, await r.text()
        async with http.get(f"{node.url}/api/sessions/this") as r:
            assert r.status == 200 and (await r.json())["id"] == t.identity
        async with http.delete(f"{node.url}/api/sessions/this") as r:
            assert r.status == 204
        async with http.put(node.api(t.handle("after-logout")), json=[URL_VALUE]) as r:
            assert r.status == 401
    async with node.session.get(node.api(t.handle("after-logout"))) as r:
        assert r.status == 404


async def test_a_stale_or_forged_cookie_is_no_session(
    cookie_node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    node = cookie_node
    for forged in ("never-issued", "x" * 5000):
        headers = {"Cookie": f"JSESSIONID={forged}"}
        async with node.session.put(
            node.api(t.handle("forged")), json=[URL_VALUE], headers=headers
        ) as r:
            assert r.status == 401
            assert r.cookies["JSESSIONID"].value != forged  # a fresh challenge session
        async with node.session.get(node.api(f"0.NA/{t.prefix}"), headers=headers) as r:
            assert r.status == 200  # public reads are unaffected
    async with node.session.get(node.api(t.handle("forged"))) as r:
        assert r.status == 404
