"""The browser face: ``GET /{handle}`` redirects, record pages, not-found pages, escaping."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningNode, Tenant, TenantFactory

MARKUP = '<script>alert("x")</script>&<b>'


async def put(node: RunningNode, t: Tenant, suffix: str, values: list[dict[str, Any]]) -> str:
    h = t.handle(suffix)
    async with node.session.put(node.api(h), json=values, headers=t.auth) as r:
        assert r.status == 201, await r.text()
    return h


async def browse(node: RunningNode, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
    async with node.session.get(f"{node.url}/{path}", allow_redirects=False, headers=headers) as r:
        return r.status, dict(r.headers), await r.text()


async def test_redirects_to_the_lowest_url_and_index_chooses(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    h = await put(
        node,
        t,
        "JXDY2106023",
        [
            {"index": 5, "type": "URL", "data": "https://example.com/second"},
            {"index": 2, "type": "URL", "data": "https://example.com/first"},
            {"index": 7, "type": "EMAIL", "data": "ops@example.com"},
        ],
    )
    status, headers, _ = await browse(node, h)
    assert status == 302 and headers["Location"] == "https://example.com/first"
    status, headers, _ = await browse(node, f"{h}?index=5")
    assert status == 302 and headers["Location"] == "https://example.com/second"
    # an index that holds no web address shows the record instead
    status, headers, page = await browse(node, f"{h}?index=7")
    assert status == 200 and "Location" not in headers and "ops@example.com" in page
    # case-insensitive, like the API
    status, headers, _ = await browse(node, h.lower())
    assert status == 302


async def test_record_page_escapes_everything_and_hides_private_values(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    h = await put(
        node,
        t,
        "markup",
        [
            {"index": 1, "type": "URL", "data": 'https://example.com/a?x=1&y="2"'},
            {"index": 2, "type": "DESC", "data": MARKUP},
            {"index": 3, "type": MARKUP[:20], "data": "type with markup"},
            {"index": 4, "type": "NOTE", "data": "private-note", "permissions": "1100"},
        ],
    )
    status, headers, page = await browse(node, f"{h}?noredirect")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&lt;b&gt;" in page
    assert 'href="https://example.com/a?x=1&amp;y=&quot;2&quot;"' in page
    assert "private-note" not in page
    assert 'name="viewport"' in page  # readable on a phone
    # references are links to their own pages
    status, _, page = await browse(node, f"0.NA/{t.prefix}?noredirect")
    assert status == 200 and f'<a href="/0.NA/{t.prefix}">0.NA/{t.prefix}</a>' in page


async def test_unsafe_urls_are_shown_never_followed(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    for n, url in enumerate(
        ["javascript:alert(1)", "data:text/html,<b>x</b>", "//evil.example/x", "ftp://x/y"]
    ):
        h = await put(node, t, f"unsafe{n}", [{"index": 1, "type": "URL", "data": url}])
        status, headers, page = await browse(node, h)
        assert status == 200, url
        assert "Location" not in headers
        assert 'href="javascript' not in page and "<b>x</b>" not in page


async def test_not_found_and_errors_are_pages(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    status, headers, page = await browse(node, t.handle("missing<b>"))
    assert status == 404 and headers["Content-Type"].startswith("text/html")
    assert "Identifier not found" in page and "missing&lt;b&gt;" in page
    status, _, page = await browse(node, "99.404.77/elsewhere")
    assert status == 400 and "not homed" in page.lower()
    status, _, page = await browse(node, "no-slash-here")
    assert status == 400 and "Cannot resolve" in page


async def test_json_on_request_and_api_paths_untouched(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    h = await put(node, t, "json", [{"index": 1, "type": "URL", "data": "https://e.x/1"}])
    async with node.session.get(
        f"{node.url}/{h}", headers={"Accept": "application/json"}, allow_redirects=False
    ) as r:
        assert r.status == 200
        body = await r.json()
    async with node.session.get(node.api(h)) as r:
        assert body == await r.json()
    async with node.session.get(
        f"{node.url}/{t.handle('nope')}", headers={"Accept": "application/json"}
    ) as r:
        assert r.status == 404 and (await r.json())["responseCode"] == 100
    async with node.session.get(f"{node.url}/api/no-such-endpoint") as r:
        assert r.status == 404 and (await r.json())["responseCode"] == 4


async def test_home_page_form_leads_to_the_record(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    h = await put(node, t, "form", [{"index": 1, "type": "URL", "data": "https://e.x/f"}])
    status, _, page = await browse(node, "")
    assert status == 200 and '<form action="/" method="get"' in page and 'name="handle"' in page
    status, headers, _ = await browse(node, f"?handle={h}&noredirect=on")
    assert status == 302 and headers["Location"] == f"/{h}?noredirect"
    async with node.session.get(f"{node.url}/?handle={h}&noredirect=on") as r:
        assert r.status == 200 and "https://e.x/f" in await r.text()
