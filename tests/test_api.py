"""The Handle REST API from a client's side: register, resolve, change, delete, list."""

from __future__ import annotations

from pathlib import Path

from registry import handle as hs
from registry.keys import NODE_KEY_INDEX, NodeKey
from registry.registry import Registry
from registry.store import Store
from tests.conftest import EMAIL_VALUE, URL_VALUE, RunningNode, Tenant, TenantFactory


async def put(node: RunningNode, t: Tenant, handle: str, body: object, **params: str):
    async with node.session.put(node.api(handle), json=body, headers=t.auth, params=params) as r:
        return r.status, await r.json()


async def get(node: RunningNode, handle: str, **params):
    async with node.session.get(node.api(handle), params=params) as r:
        return r.status, await r.json()


async def test_register_then_resolve(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    status, body = await put(node, t, t.handle("JXDY2106023"), {"values": [URL_VALUE, EMAIL_VALUE]})
    assert (status, body) == (201, {"responseCode": 1, "handle": t.handle("JXDY2106023")})

    status, body = await get(node, t.handle("JXDY2106023"))
    assert status == 200
    assert body["responseCode"] == 1 and body["handle"] == t.handle("JXDY2106023")
    by_index = {v["index"]: v for v in body["values"]}
    assert by_index[1]["data"] == {"format": "string", "value": "https://example.com/1"}
    assert by_index[2]["data"] == {"format": "string", "value": "ops@example.com"}
    assert by_index[1]["ttl"] == 86400
    assert by_index[1]["timestamp"].endswith("Z")
    # created without an HS_ADMIN: the creator is made its admin, as Handle.Net does
    assert by_index[100]["type"] == "HS_ADMIN"
    assert by_index[100]["data"]["value"]["handle"] == f"0.NA/{t.prefix}"


async def test_lookup_is_case_insensitive_and_echoes_spelling(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    await put(node, t, t.handle("AbC"), [URL_VALUE])
    status, body = await get(node, t.handle("aBc"))
    assert status == 200 and body["handle"] == t.handle("aBc")
    status, body = await put(node, t, t.handle("ABC"), [URL_VALUE], overwrite="false")
    assert (status, body["responseCode"]) == (409, 101)


async def test_filters_by_index_and_type(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    sub = {"index": 3, "type": "URL.mirror", "data": "https://mirror.example.com"}
    await put(node, t, t.handle("f"), [URL_VALUE, EMAIL_VALUE, sub])
    _, body = await get(node, t.handle("f"), type="EMAIL")
    assert [v["index"] for v in body["values"]] == [2]
    async with node.session.get(node.api(t.handle("f")) + "?index=1&index=2") as r:
        assert sorted(v["index"] for v in (await r.json())["values"]) == [1, 2]
    _, body = await get(node, t.handle("f"), type="URL.")
    assert sorted(v["index"] for v in body["values"]) == [1, 3]
    status, body = await get(node, t.handle("f"), type="NOPE")
    assert (status, body["responseCode"]) == (200, 200)


async def test_add_and_change_values_by_index(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    await put(node, t, t.handle("v"), [URL_VALUE])
    status, _ = await put(node, t, t.handle("v"), [EMAIL_VALUE], index="2", overwrite="false")
    assert status == 201
    status, body = await put(node, t, t.handle("v"), [EMAIL_VALUE], index="2", overwrite="false")
    assert (status, body["responseCode"]) == (409, 201)
    changed = {"index": "2", "type": "EMAIL", "data": "new@example.com"}
    status, _ = await put(node, t, t.handle("v"), [changed], index="2")
    assert status == 200
    _, body = await get(node, t.handle("v"), index="2")
    assert body["values"][0]["data"]["value"] == "new@example.com"
    _, body = await get(node, t.handle("v"), index="1")
    assert body["values"][0]["data"]["value"] == "https://example.com/1"


async def test_replace_whole_record(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    await put(node, t, t.handle("r"), [URL_VALUE, EMAIL_VALUE])
    status, body = await put(node, t, t.handle("r"), [URL_VALUE])
    assert (status, body["responseCode"]) == (200, 1)
    _, body = await get(node, t.handle("r"))
    assert [v["index"] for v in body["values"]] == [1]


async def test_delete_values_then_record(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    await put(node, t, t.handle("d"), [URL_VALUE, EMAIL_VALUE])
    async with node.session.delete(node.api(t.handle("d")) + "?index=2", headers=t.auth) as r:
        assert (r.status, (await r.json())["responseCode"]) == (200, 1)
    _, body = await get(node, t.handle("d"))
    assert 2 not in [v["index"] for v in body["values"]]
    async with node.session.delete(node.api(t.handle("d")), headers=t.auth) as r:
        assert (r.status, await r.json()) == (200, {"responseCode": 1, "handle": t.handle("d")})
    status, body = await get(node, t.handle("d"))
    assert (status, body["responseCode"], body["handle"]) == (404, 100, t.handle("d"))


async def test_mint_new_suffix(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    status, body = await put(node, t, t.prefix, [URL_VALUE], mintNewSuffix="true")
    assert status == 201
    minted = body["handle"]
    assert minted.startswith(t.prefix + "/") and len(minted) > len(t.prefix) + 30
    status, _ = await get(node, minted)
    assert status == 200


async def test_list_and_paging(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    for n in range(5):
        await put(node, t, t.handle(f"item{n}"), [URL_VALUE])
    async with node.session.get(
        f"{node.url}/api/handles", params={"prefix": t.prefix}, headers=t.auth
    ) as r:
        body = await r.json()
    assert body["totalCount"] == "5"
    assert body["handles"] == [t.handle(f"item{n}") for n in range(5)]
    params = {"prefix": t.prefix, "page": "1", "pageSize": "2"}
    async with node.session.get(f"{node.url}/api/handles", params=params, headers=t.auth) as r:
        body = await r.json()
    assert body["handles"] == [t.handle("item2"), t.handle("item3")]
    assert (body["page"], body["pageSize"], body["totalCount"]) == (1, 2, "5")
    params = {"prefix": t.prefix, "pageSize": "0"}
    async with node.session.get(f"{node.url}/api/handles", params=params, headers=t.auth) as r:
        body = await r.json()
    assert body["totalCount"] == "5" and body["handles"] == []


async def test_prefixes_lists_homed(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    async with node.session.get(f"{node.url}/api/prefixes") as r:
        body = await r.json()
    assert r.status == 200 and t.prefix in body["prefixes"]


async def test_secret_is_never_shown_publicly(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    status, body = await get(node, f"0.NA/{t.prefix}")
    assert status == 200
    # public: the admin reference and the node's own key, never the secret
    assert [(v["index"], v["type"]) for v in body["values"]] == [
        (100, "HS_ADMIN"),
        (301, "HS_PUBKEY"),
    ]
    assert t.secret not in str(body)
    # the admin sees the value, but only as a salted hash (and sealed)
    async with node.session.get(node.api(f"0.NA/{t.prefix}"), headers=t.auth) as r:
        body = await r.json()
    seckey = [v for v in body["values"] if v["type"] == "HS_SECKEY"]
    assert seckey and seckey[0]["permissions"] == "1100"
    assert seckey[0]["data"]["value"].startswith("pbkdf2-sha256$")
    assert t.secret not in str(body)


async def test_non_ascii_digits_are_not_numbers(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    await put(node, t, t.handle("n"), [URL_VALUE])
    for params in ({"index": "\u00b2"}, {"page": "\u0661"}):
        url = node.api(t.handle("n")) if "index" in params else f"{node.url}/api/handles"
        query = params if "index" in params else {**params, "prefix": t.prefix}
        async with node.session.get(url, params=query) as r:
            assert r.status == 400, params
            assert (await r.json())["responseCode"] == 4
    status, body = await put(node, t, t.handle("n"), [{**URL_VALUE, "index": "\u00b2"}])
    assert (status, body["responseCode"]) == (400, 202)


async def test_secret_values_cannot_be_made_public(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    value = {"index": 8, "type": "HS_SECKEY", "data": "pubsecret", "permissions": "1110"}
    status, body = await put(node, t, t.handle("s"), [URL_VALUE, value])
    assert (status, body["responseCode"]) == (400, 202)
    assert "publicly readable" in body["message"]
    status, _ = await get(node, t.handle("s"))
    assert status == 404, "nothing was written"


async def test_reverse_lookup(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    hidden = {"index": 9, "type": "SERIAL", "data": "SECRET-1", "permissions": "1100"}
    await put(node, t, t.handle("s1"), [{**URL_VALUE, "data": "https://search.example/a_1%"}])
    await put(node, t, t.handle("s2"), [{**URL_VALUE, "data": "https://search.example/b"}])
    await put(node, t, t.handle("s3"), [{**URL_VALUE, "data": "https://search.example/b"}, hidden])

    async def search(query: str) -> tuple[int, object]:
        async with node.session.get(f"{node.url}/hrls/handles/?{query}") as r:
            return r.status, await r.json()

    assert await search("URL=https://search.example/*") == (
        200,
        [t.handle("s1"), t.handle("s2"), t.handle("s3")],
    )
    assert await search("url=HTTPS://SEARCH.EXAMPLE/B") == (200, [t.handle("s2"), t.handle("s3")])
    # % and _ are literal; only * is a wildcard
    assert await search("URL=https://search.example/a_1%25") == (200, [t.handle("s1")])
    assert await search("URL=https://search.example/a%25") == (200, [])
    # every term must match; non-public values are never searched
    assert await search("URL=*search.example/b&SERIAL=SECRET-*") == (200, [])
    assert await search("URL=https://search.example/*&limit=1&page=1") == (200, [t.handle("s2")])
    status, body = await search("limit=5")
    assert status == 400 and body["responseCode"] == 4 and "search term" in body["message"]


async def test_publishing_the_node_key_writes_only_what_changed(
    registry: Registry, store: Store, tenant: TenantFactory, tmp_path: Path
) -> None:
    t = await tenant()
    record = hs.prefix_record(t.prefix)
    assert await registry.publish_node_key() == 0  # homed with this key: nothing to write
    other = Registry(store, node_key=NodeKey.load_or_create(tmp_path / "other.pem"))
    assert await other.publish_node_key() >= 1  # a new key replaces the published one
    stored = await store.get(record)
    assert stored is not None
    published = next(v for v in stored.values if v.index == NODE_KEY_INDEX)
    assert other.node_key is not None
    assert published.same_content(other.node_key.value(published.timestamp))
    assert await other.publish_node_key() == 0
    assert await registry.publish_node_key() >= 1  # the shared database gets the node's key back
