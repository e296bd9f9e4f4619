"""Listing and search at scale (registry/search.py, schemas/sql/003_search.sql): keyset pages,
trigger-kept counts and terms (through the API and through set-based SQL), literal
patterns, private values, limits, cursors, and the query plans."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest
from yarl import URL

from registry import migrate, search
from registry import values as hv
from registry.errors import ProtocolError
from registry.handle import fold
from registry.registry import Registry
from registry.store import Store, stored_columns
from tests.conftest import URL_VALUE, RunningNode, Tenant, TenantFactory, data_template

_COLUMNS = ("prefix_key", "suffix_key", "handle", "values", "all_public", "public_ttl")
Answer = tuple[int, Any]


# --- helpers -------------------------------------------------------------------------------


def value(index: int, vtype: str, data: str, permissions: str = "1110") -> hv.Value:
    return hv.Value(
        index, vtype, "string", data, timestamp="2024-01-01T00:00:00Z", permissions=permissions
    )


def row(prefix: str, suffix: str, *values: hv.Value) -> tuple[object, ...]:
    """A ``handles`` row as the store writes it."""
    return (fold(prefix), fold(suffix), f"{prefix}/{suffix}", *stored_columns(values))


async def copy_rows(store: Store, rows: Sequence[tuple[object, ...]]) -> None:
    """COPY rows straight into ``handles``, as a bulk import does."""
    async with store.pool.acquire() as conn:
        await conn.copy_records_to_table("handles", records=rows, columns=_COLUMNS)


async def get(node: RunningNode, path: str, **params: str) -> Answer:
    async with node.session.get(f"{node.url}{path}", params=params) as r:
        assert r.content_type == "application/json", await r.text()
        return r.status, await r.json()


async def listing(node: RunningNode, t: Tenant, **params: str) -> Answer:
    async with node.session.get(
        f"{node.url}/api/handles", params={"prefix": t.prefix, **params}, headers=t.auth
    ) as r:
        return r.status, await r.json()


async def found(node: RunningNode, vtype: str, value: str, **params: str) -> list[str]:
    """Every handle ``/api/search`` answers, following ``next`` to the end."""
    handles: list[str] = []
    cursor: dict[str, str] = {}
    while True:
        status, body = await get(node, "/api/search", type=vtype, value=value, **params, **cursor)
        assert status == 200, body
        handles += body["handles"]
        if body["next"] is None:
            return handles
        cursor = {"cursor": body["next"]}


async def hrls(node: RunningNode, query: str) -> Answer:
    """A reverse lookup sent as pyhandle sends it: the query unencoded, Basic credentials."""
    url = URL(f"{node.url}/hrls/handles/?{query}", encoded=True)
    headers = {"Authorization": "Basic " + base64.b64encode(b"300%3A0.NA%2F1:x").decode()}
    async with node.session.get(url, headers=headers) as r:
        return r.status, await r.json()


async def put(node: RunningNode, t: Tenant, suffix: str, *values: dict[str, Any]) -> None:
    async with node.session.put(node.api(t.handle(suffix)), json=list(values), headers=t.auth) as r:
        assert r.status in (200, 201), await r.text()


async def delete(node: RunningNode, t: Tenant, suffix: str) -> None:
    async with node.session.delete(node.api(t.handle(suffix)), headers=t.auth) as r:
        assert r.status == 200, await r.text()


async def true_count(store: Store, t: Tenant) -> int:
    count: int = await store.pool.fetchval(
        "SELECT count(*) FROM handles WHERE prefix_key = $1", fold(t.prefix)
    )
    return count


def by_key(*handles: str) -> list[str]:
    """Handles in the order of their keys (prefix, then suffix), as ties are answered."""
    return sorted(handles, key=lambda h: tuple(fold(h).split("/", 1)))


def assert_error(answer: Answer, *, code: int, says: str) -> None:
    status, body = answer
    assert status == 400, body
    assert body["responseCode"] == code and says in body["message"], body


# --- listing -------------------------------------------------------------------------------


async def test_cursor_walk_sees_every_handle_once_while_the_prefix_changes(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await tenant()
    original = [t.handle(f"h{n:03}") for n in range(40)]
    await copy_rows(store, [row(t.prefix, f"h{n:03}", value(1, "URL", "u")) for n in range(40)])
    seen: list[str] = []
    added_ahead, added_behind, deleted_ahead = [], [], []
    cursor: dict[str, str] = {}
    for step in range(100):
        status, body = await listing(node, t, pageSize="7", **cursor)
        assert status == 200, body
        assert body["page"] == (None if cursor else 0)
        seen += body["handles"]
        if body["next"] is None:
            break
        cursor = {"cursor": body["next"]}
        # between pages: a handle created on each side of the cursor, one deleted on each side
        first, last = (h.split("/", 1)[1] for h in (body["handles"][0], body["handles"][-1]))
        created = [f"{last}+{step}", f"{first}+b{step}"]
        await copy_rows(store, [row(t.prefix, s, value(1, "URL", "x")) for s in created])
        added_ahead.append(t.handle(created[0]))
        added_behind.append(t.handle(created[1]))
        unseen = sorted(set(original) - set(seen) - set(deleted_ahead))
        doomed = [first] + ([unseen[1].split("/", 1)[1]] if len(unseen) > 1 else [])
        deleted_ahead += [t.handle(s) for s in doomed[1:]]
        await store.pool.execute(
            "DELETE FROM handles WHERE prefix_key = $1 AND suffix_key = ANY($2::text[])",
            fold(t.prefix),
            doomed,
        )
    assert len(seen) == len(set(seen)), "a handle was answered twice"
    assert seen == sorted(seen)
    assert set(original) - set(deleted_ahead) <= set(seen), "a handle was skipped"
    assert not set(deleted_ahead) & set(seen)
    assert set(added_ahead) <= set(seen) and not set(added_behind) & set(seen)
    _, body = await listing(node, t, pageSize="0")
    assert body["totalCount"] == str(await true_count(store, t)) and body["next"] is None


async def test_cursor_is_stable_and_pages_agree_with_offsets(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await tenant()
    await copy_rows(store, [row(t.prefix, f"k{n:02}", value(1, "URL", "u")) for n in range(10)])
    _, first = await listing(node, t, pageSize="4")
    assert first["handles"] == [t.handle(f"k{n:02}") for n in range(4)]
    once = await listing(node, t, pageSize="4", cursor=first["next"])
    again = await listing(node, t, pageSize="4", cursor=first["next"])
    assert once == again
    _, by_page = await listing(node, t, pageSize="4", page="1")
    assert once[1]["handles"] == by_page["handles"]
    assert by_page["next"] == once[1]["next"]  # a page answers the cursor of the next one
    _, last = await listing(node, t, pageSize="4", cursor=once[1]["next"])
    assert last["handles"] == [t.handle("k08"), t.handle("k09")] and last["next"] is None
    _, beyond = await listing(node, t, pageSize="4", page="3000")
    assert beyond["handles"] == [] and beyond["next"] is None


async def test_counts_follow_api_writes_and_set_based_sql(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await tenant()

    async def counted() -> int:
        _, body = await listing(node, t, pageSize="0")
        return int(body["totalCount"])

    await put(node, t, "api1", URL_VALUE)
    await put(node, t, "api2", URL_VALUE)
    await put(node, t, "api2", URL_VALUE)  # an update is not a new handle
    assert await counted() == 2
    await delete(node, t, "api1")
    assert await counted() == 1
    await copy_rows(store, [row(t.prefix, f"c{n}", value(1, "URL", "u")) for n in range(500)])
    assert await counted() == 501
    await store.pool.execute(
        'INSERT INTO handles (prefix_key, suffix_key, handle, "values", all_public)'
        " SELECT $1, 'g' || n, $2 || '/g' || n, '[]', true FROM generate_series(1, 50) n",
        fold(t.prefix),
        t.prefix,
    )
    # an upsert inserts some rows and updates others in one statement
    await store.pool.execute(
        'INSERT INTO handles (prefix_key, suffix_key, handle, "values", all_public)'
        " SELECT $1, 'g' || n, $2 || '/g' || n, '[]', true FROM generate_series(41, 60) n"
        ' ON CONFLICT (prefix_key, suffix_key) DO UPDATE SET "values" = excluded."values"',
        fold(t.prefix),
        t.prefix,
    )
    await store.pool.execute(
        "DELETE FROM handles WHERE prefix_key = $1 AND suffix_key LIKE 'c1%'", fold(t.prefix)
    )
    assert await counted() == await true_count(store, t) == 501 + 60 - 111
    # a key moved to another prefix moves its count
    other = await tenant()
    await store.pool.execute(
        "UPDATE handles SET prefix_key = $2 WHERE prefix_key = $1 AND suffix_key LIKE 'g%'",
        fold(t.prefix),
        fold(other.prefix),
    )
    assert await counted() == await true_count(store, t) == 450 - 60
    assert await search.count_handles(store, other.prefix) == 60


# --- search --------------------------------------------------------------------------------


async def test_exact_and_prefix_matches(node: RunningNode, tenant: TenantFactory) -> None:
    t, u = await tenant(), await tenant()
    base = f"https://{uuid.uuid4().hex}.example/"
    for suffix in ("a", "b", "c"):
        await put(node, t, suffix, {**URL_VALUE, "data": base + suffix.upper()})
    await put(node, u, "a", {**URL_VALUE, "data": base + "a"})
    # the handle with two matching values is answered once
    await put(
        node,
        t,
        "two",
        {**URL_VALUE, "data": base + "a/1"},
        {**URL_VALUE, "index": 2, "data": base + "a/2"},
    )
    tied = by_key(t.handle("a"), u.handle("a"))  # one term: in key order
    assert await found(node, "url", base + "a") == tied
    assert await found(node, "URL", base.upper() + "A", prefix=u.prefix) == [u.handle("a")]
    everything = [*tied, t.handle("two"), t.handle("b"), t.handle("c")]
    assert await found(node, "URL", base + "*") == everything
    for limit in ("1", "2", "3"):
        assert await found(node, "URL", base + "*", limit=limit) == everything
    assert await found(node, "URL", base + "*", prefix=t.prefix, limit="1") == [
        t.handle("a"),
        t.handle("two"),
        t.handle("b"),
        t.handle("c"),
    ]
    assert await found(node, "URL", base + "a*") == [*tied, t.handle("two")]
    assert await found(node, "URL", "*" + base[8:] + "c") == [t.handle("c")]  # leading *: scan
    assert await found(node, "URL.mirror", base + "*") == []  # types match exactly
    assert await found(node, "EMAIL", base + "*") == []


async def test_terms_follow_updates_and_deletes(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await tenant()
    old, new = f"old-{uuid.uuid4().hex}", f"new-{uuid.uuid4().hex}"
    await put(node, t, "x", {**URL_VALUE, "data": old})
    assert await found(node, "URL", old) == [t.handle("x")]
    await put(node, t, "x", {**URL_VALUE, "data": new})
    assert await found(node, "URL", old) == []
    assert await found(node, "URL", new) == [t.handle("x")]
    await put(node, t, "x", {**URL_VALUE, "data": new, "permissions": "1100"})  # made private
    assert await found(node, "URL", new) == []
    await put(node, t, "x", {**URL_VALUE, "data": new})
    await delete(node, t, "x")
    assert await found(node, "URL", new) == []
    # set-based SQL: a bulk UPDATE ... FROM and a bulk DELETE
    await copy_rows(
        store, [row(t.prefix, f"b{n}", value(1, "SERIAL", f"{old}-{n}")) for n in range(20)]
    )
    await store.pool.execute(
        'UPDATE handles h SET "values" = s.v::json FROM (SELECT $2 || n AS sk, json_build_array('
        "json_build_object('index', 1, 'type', 'SERIAL', 'data', json_build_object("
        "'format', 'string', 'value', $3 || n), 'ttl', 1, 'timestamp', 'x'))::text AS v"
        " FROM generate_series(0, 9) n) s WHERE h.prefix_key = $1 AND h.suffix_key = s.sk",
        fold(t.prefix),
        "b",
        f"{new}-",
    )
    assert len(await found(node, "serial", f"{old}-*")) == 10
    assert len(await found(node, "serial", f"{new}-*")) == 10
    await store.pool.execute("DELETE FROM handles WHERE prefix_key = $1", fold(t.prefix))
    assert await found(node, "serial", f"{old}-*") == []
    leftover = await store.pool.fetchval(
        "SELECT count(*) FROM handle_terms WHERE prefix_key = $1", fold(t.prefix)
    )
    assert leftover == 0


async def test_private_values_are_never_searchable(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await tenant()
    secret = f"SECRET-{uuid.uuid4().hex}"
    hidden = {"index": 9, "type": "SERIAL", "data": secret, "permissions": "1100"}
    await put(node, t, "p", {**URL_VALUE, "data": f"https://{secret}.example/"}, hidden)
    assert await found(node, "SERIAL", secret) == []
    assert await found(node, "SERIAL", "secret-*", prefix=t.prefix) == []
    assert await hrls(node, f"SERIAL={secret}") == (200, [])
    assert await hrls(node, f"URL=https://{secret}.example/&SERIAL=*") == (200, [])
    stored = await store.pool.fetch(
        "SELECT term FROM handle_terms WHERE prefix_key = $1", fold(t.prefix)
    )
    assert [r["term"] for r in stored] == [f"https://{secret}.example/".lower()]


async def test_like_characters_are_literal(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    tag = uuid.uuid4().hex
    for suffix, text in {
        "pct": "a%b",
        "und": "a_b",
        "bsl": "a\\b",
        "x": "axb",
        "xx": "axxb",
    }.items():
        await put(node, t, suffix, {**URL_VALUE, "data": f"{tag}{text}"})
    for text, suffix in {"a%b": "pct", "a_b": "und", "a\\b": "bsl", "axb": "x"}.items():
        assert await found(node, "URL", f"{tag}{text}") == [t.handle(suffix)], text
    assert await found(node, "URL", f"{tag}a%*") == [t.handle("pct")]
    assert await found(node, "URL", f"{tag}a\\*") == [t.handle("bsl")]
    assert await found(node, "URL", f"{tag}a*b") == [
        t.handle(s) for s in ("pct", "bsl", "und", "x", "xx")
    ]
    assert await hrls(node, f"URL={tag}a%25b") == (200, [t.handle("pct")])
    assert await hrls(node, f"URL={tag}a_*") == (200, [t.handle("und")])


async def test_long_values_match_beyond_the_indexed_start(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    head = f"https://{uuid.uuid4().hex}.example/" + "p" * 300
    await put(node, t, "one", {**URL_VALUE, "data": head + "/one"})
    await put(node, t, "two", {**URL_VALUE, "data": head + "/two"})
    assert await found(node, "URL", head + "/one") == [t.handle("one")]
    assert await found(node, "URL", head.upper() + "/TWO") == [t.handle("two")]
    assert await found(node, "URL", head + "/t*") == [t.handle("two")]
    assert await found(node, "URL", "*" + head[8:40] + "*/two") == [t.handle("two")]
    assert await found(node, "URL", head + "*") == [t.handle("one"), t.handle("two")]
    assert await found(node, "URL", head) == []


async def test_values_holding_nul_are_written_and_found(
    node: RunningNode, tenant: TenantFactory
) -> None:
    """jsonb cannot hold U+0000: the index reads it as U+FFFD, and the write still works."""
    t = await tenant()
    tag = uuid.uuid4().hex
    await put(
        node,
        t,
        "nul",
        {**URL_VALUE, "data": f"{tag}-a\x00b"},
        {"index": 2, "type": "NOTE", "data": {"format": "site", "value": {"x": "\x00"}}},
    )
    await put(node, t, "esc", {**URL_VALUE, "data": f"{tag}-a\\u0000b"})  # a backslash, not NUL
    long = f"{tag}-" + "l" * 300
    await put(node, t, "long", {**URL_VALUE, "data": long + "\x00"})
    assert await found(node, "URL", f"{tag}-a*") == [t.handle("esc"), t.handle("nul")]
    assert await found(node, "URL", f"{tag}-a\ufffdb") == [t.handle("nul")]
    assert await found(node, "URL", f"{tag}-a\\u0000b") == [t.handle("esc")]
    assert await found(node, "URL", long + "*") == [t.handle("long")]  # checked on the record
    status, body = await get(node, f"/api/handles/{t.handle('nul')}")
    assert status == 200 and body["values"][0]["data"]["value"] == f"{tag}-a\x00b"


async def test_pyhandle_style_reverse_lookup(node: RunningNode, tenant: TenantFactory) -> None:
    t, u = await tenant(), await tenant()
    base = f"https://{uuid.uuid4().hex}.example/"
    await put(
        node,
        t,
        "1",
        {**URL_VALUE, "data": base + "1"},
        {"index": 2, "type": "CHECKSUM", "data": "aa"},
    )
    await put(
        node,
        t,
        "2",
        {**URL_VALUE, "data": base + "2"},
        {"index": 2, "type": "CHECKSUM", "data": "bb"},
    )
    await put(
        node,
        u,
        "3",
        {**URL_VALUE, "data": base + "3"},
        {"index": 2, "type": "CHECKSUM", "data": "bb"},
    )
    assert await hrls(node, f"URL={base}*") == (200, [t.handle("1"), t.handle("2"), u.handle("3")])
    # the exact pattern drives: matches in key order under its one term
    both = by_key(t.handle("2"), u.handle("3"))
    assert await hrls(node, f"URL={base}*&CHECKSUM=BB") == (200, both)
    assert await hrls(node, f"CHECKSUM=bb&URL={base}*") == (200, both)
    assert await hrls(node, f"URL={base}*&CHECKSUM=bb&prefix={u.prefix}") == (200, [u.handle("3")])
    assert await hrls(node, f"URL={base}*&limit=2&page=1") == (200, [u.handle("3")])
    assert await hrls(node, f"URL={base}nothing") == (200, [])
    status, body = await hrls(node, "limit=5")
    assert_error((status, body), code=4, says="search term")


# --- refusals ------------------------------------------------------------------------------


async def test_limits_over_the_maximum_are_refused(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    assert_error(await listing(node, t, pageSize="10001"), code=4, says="from 0 to 10000")
    answer = await get(node, "/api/search", type="URL", value="x", limit="10001")
    assert_error(answer, code=4, says="limit must be an integer from 0 to 10000")
    assert_error(await hrls(node, "URL=x&limit=99999999999999999999"), code=4, says="limit")
    many = "&".join(f"T{n}=x" for n in range(17))
    assert_error(await hrls(node, many), code=4, says="at most 16")
    answer = await get(node, "/api/search", type="URL", value="x" * 4097)
    assert_error(answer, code=4, says="longer than 4096")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not a cursor!", id="alphabet"),
        pytest.param("abcde", id="length"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe").decode(), id="not-json"),
        pytest.param(base64.urlsafe_b64encode(b'["s","a","b","c",1]').decode(), id="search-one"),
        pytest.param(base64.urlsafe_b64encode(b'["l","a\\u0000"]').decode(), id="nul"),
        pytest.param(base64.urlsafe_b64encode(b'["l",5]').decode(), id="wrong-type"),
    ],
)
async def test_bad_listing_cursors_are_refused(
    node: RunningNode, tenant: TenantFactory, cursor: str
) -> None:
    t = await tenant()
    assert_error(await listing(node, t, cursor=cursor), code=4, says="cursor is malformed")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("%%%", id="alphabet"),
        pytest.param(base64.urlsafe_b64encode(b'["l","a"]').decode(), id="listing-one"),
        pytest.param(base64.urlsafe_b64encode(b'["s","a","b","c",1.5]').decode(), id="float"),
        pytest.param(base64.urlsafe_b64encode(b'["s","a","b","c",true]').decode(), id="bool"),
        pytest.param(base64.urlsafe_b64encode(b'["s","a","b","c",9999999999]').decode(), id="big"),
        pytest.param(base64.urlsafe_b64encode(b'{"s":1}').decode(), id="object"),
    ],
)
async def test_bad_search_cursors_are_refused(node: RunningNode, cursor: str) -> None:
    answer = await get(node, "/api/search", type="URL", value="x*", cursor=cursor)
    assert_error(answer, code=4, says="cursor is malformed")


async def test_bad_search_requests_are_refused(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    answer = await get(node, "/api/search", value="x")
    assert_error(answer, code=4, says="exactly one of type= and field=")
    assert_error(await get(node, "/api/search", type="URL"), code=4, says="value is required")
    answer = await get(node, "/api/search", type="URL", value="a\x00b")
    assert_error(answer, code=4, says="NUL")
    answer = await get(node, "/api/search", type="U\x00RL", value="a")
    assert_error(answer, code=4, says="NUL")
    assert_error(await hrls(node, "URL=a%00b"), code=4, says="NUL")
    answer = await get(node, "/api/search", type="URL", value="a", prefix="99.404.77")
    assert_error(answer, code=301, says="not homed")
    answer = await get(node, "/api/search", type="URL", value="a", prefix="88..1")
    assert_error(answer, code=102, says="empty dotted segment")
    assert_error(await hrls(node, "URL=a&prefix=88..1"), code=102, says="empty dotted segment")
    _, first = await listing(node, t, pageSize="1")
    answer = await listing(node, t, page="0", cursor=first["next"] or "")
    assert_error(answer, code=4, says="page or cursor")
    answer = await get(node, "/api/search", type="T" * 257, value="a")
    assert_error(answer, code=4, says="longer than 256")


async def test_search_by_a_template_field(
    node: RunningNode, tenant: TenantFactory, registry: Registry
) -> None:
    t = await tenant()
    template = data_template(
        {
            "batchNumber": {"type": "string", "x-handle": {"type": "BATCH_NUMBER"}},
            "partNumber": {"type": "string", "x-handle": {"type": "PART_NUMBER", "index": 2}},
        }
    )
    await registry.operator_set_template(t.prefix, template)
    await put(
        node,
        t,
        "a",
        {"index": 2, "type": "PART_NUMBER", "data": "JX-1"},
        {"index": 3, "type": "BATCH_NUMBER", "data": "B7"},
    )
    await put(
        node,
        t,
        "b",
        {"index": 2, "type": "PART_NUMBER", "data": "JX-2"},
        {"index": 3, "type": "BATCH_NUMBER", "data": "B7"},
    )
    assert await found(node, "", "B7", field="batchNumber", prefix=t.prefix) == by_key(
        t.handle("a"), t.handle("b")
    )
    status, body = await get(node, "/api/search", field="partNumber", value="jx-2", prefix=t.prefix)
    assert (status, body["handles"]) == (200, [t.handle("b")])
    answer = await get(node, "/api/search", field="partNumber", value="x")
    assert_error(answer, code=4, says="give prefix= too")
    answer = await get(node, "/api/search", field="colour", value="x", prefix=t.prefix)
    assert_error(answer, code=4, says="has no field 'colour' (it has: batchNumber, partNumber)")
    answer = await get(node, "/api/search", field="x", type="URL", value="x", prefix=t.prefix)
    assert_error(answer, code=4, says="exactly one of type= and field=")
    other = await tenant()
    answer = await get(node, "/api/search", field="x", value="x", prefix=other.prefix)
    assert_error(answer, code=4, says="has no data template")


# --- plans and the migration ---------------------------------------------------------------


async def plan(store: Store, sql: str, args: Sequence[object]) -> str:
    """The plan PostgreSQL picks when sequential scans are priced out: index or nothing."""
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        rows = await conn.fetch(f"EXPLAIN {sql}", *args)
    return "\n".join(r[0] for r in rows)


async def test_queries_use_the_indexes(store: Store) -> None:
    exact = await plan(store, *search.search_query([("URL", search.pattern("a"))], limit=10))
    assert re.search(r"Index (Only )?Scan using handle_terms_match on handle_terms t\b", exact)
    assert "Sort" not in exact, exact
    prefix = await plan(store, *search.search_query([("URL", search.pattern("ab*"))], limit=10))
    conditions = [line for line in prefix.splitlines() if "Index Cond" in line]
    assert any("term >=" in line and "term <=" in line for line in conditions), prefix
    assert "Sort" not in prefix, prefix
    after = search.SearchKey("abc", "88.1", "x", 1)
    deep = await plan(
        store, *search.search_query([("URL", search.pattern("ab*"))], after=after, limit=10)
    )
    assert "Index Cond" in deep and "ROW(term, prefix_key, suffix_key, idx) >" in deep, deep
    keyset = await plan(store, *search.listing_query("88.1", after="x", limit=10))
    assert "Index Scan using handles_pkey" in keyset and "suffix_key >" in keyset, keyset
    assert "Sort" not in keyset, keyset


async def test_migration_backfills_existing_records(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrate.available()
    monkeypatch.setattr(migrate, "available", lambda: [m for m in shipped if m.version < 3])
    conn = await asyncpg.connect(fresh_db)
    try:
        await migrate.migrate(conn)
        rows = [
            row("88.5", "a", value(1, "URL", "https://A/"), value(2, "EMAIL", "x", "1100")),
            row("88.5", "b", value(1, "URL", "https://b/")),
            row("88.6", "c", value(7, "URL", "https://c/")),
        ]
        await conn.copy_records_to_table("handles", records=rows, columns=_COLUMNS)
        monkeypatch.setattr(migrate, "available", lambda: shipped)
        assert 3 in [m.version for m in await migrate.migrate(conn)]
        counts = await conn.fetch(
            "SELECT prefix_key, sum(n) AS n FROM handle_counts GROUP BY 1 ORDER BY 1"
        )
        assert [(r["prefix_key"], r["n"]) for r in counts] == [("88.5", 2), ("88.6", 1)]
        terms = await conn.fetch(
            "SELECT suffix_key, idx, type_key, term FROM handle_terms ORDER BY suffix_key"
        )
        assert [tuple(r) for r in terms] == [
            ("a", 1, "url", "https://a/"),
            ("b", 1, "url", "https://b/"),
            ("c", 7, "url", "https://c/"),
        ]
        await conn.execute("TRUNCATE handles")
        assert await conn.fetchval("SELECT count(*) FROM handle_terms") == 0
        assert await conn.fetchval("SELECT count(*) FROM handle_counts") == 0
    finally:
        await conn.close()


def test_cursors_longer_than_any_made_are_refused() -> None:
    """(Over HTTP, aiohttp refuses a request line this long before the handler runs.)"""
    for parse in (search.listing_after, search.search_after):
        with pytest.raises(ProtocolError, match="cursor is malformed"):
            parse("A" * (search.MAX_CURSOR_CHARS + 4))
