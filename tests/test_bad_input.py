"""Bad input from a client's side: every malformed request is refused with a 4xx JSON error
that names the problem, and a refused write leaves the store exactly as it was."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import pytest
from multidict import CIMultiDictProxy
from yarl import URL

from registry import handle as hs
from registry.store import Record, Store
from tests.conftest import EMAIL_VALUE, URL_VALUE, RunningNode, Tenant, TenantFactory

KEEP = "keep"
NEW = "new"
Answer = tuple[int, dict[str, Any], CIMultiDictProxy[str]]
Snapshot = tuple[int, dict[str, Any], Record | None]


# --- helpers -------------------------------------------------------------------------------


def raw(node: RunningNode, path: str) -> URL:
    """A URL sent exactly as written: no re-quoting of the percent sequences in ``path``."""
    return URL(f"{node.url}{path}", encoded=True)


async def call(
    node: RunningNode,
    method: str,
    url: str | URL,
    *,
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Answer:
    async with node.session.request(method, url, headers=headers, **kwargs) as r:
        assert r.content_type == "application/json", (r.status, await r.text())
        return r.status, await r.json(), r.headers


def assert_error(answer: Answer, *, http: int, code: int, says: str) -> None:
    status, body, _ = answer
    assert 400 <= status < 500, answer
    assert status == http, body
    assert {"responseCode", "handle", "message"} <= set(body), body
    assert body["responseCode"] == code, body
    assert isinstance(body["message"], str) and says in body["message"], body


async def snapshot(node: RunningNode, store: Store, t: Tenant, handle: str) -> Snapshot:
    """What the admin reads through the API, and the row in PostgreSQL (None when absent)."""
    async with node.session.get(node.api(handle), headers=t.auth) as r:
        status, body = r.status, await r.json()
    return status, body, await store.get(hs.parse(handle))


async def listing(node: RunningNode, t: Tenant) -> list[str]:
    params = {"prefix": t.prefix}
    async with node.session.get(f"{node.url}/api/handles", params=params, headers=t.auth) as r:
        assert r.status == 200
        return list((await r.json())["handles"])


async def with_record(tenant: TenantFactory, node: RunningNode) -> Tenant:
    """A fresh tenant holding one record ``<prefix>/keep`` with values 1 and 2."""
    t = await tenant()
    async with node.session.put(
        node.api(t.handle(KEEP)), json={"values": [URL_VALUE, EMAIL_VALUE]}, headers=t.auth
    ) as r:
        assert r.status == 201, await r.text()
    return t


async def assert_writes_refused(
    node: RunningNode,
    store: Store,
    t: Tenant,
    *,
    http: int,
    code: int,
    says: str,
    index_params: Mapping[str, str] | None = None,
    **request: Any,
) -> None:
    """PUT ``request`` as a create, a whole-record replace and (given ``index_params``) a
    by-index change; each must fail the same way and leave both handles as they were."""
    before_keep = await snapshot(node, store, t, t.handle(KEEP))
    before_new = await snapshot(node, store, t, t.handle(NEW))
    assert before_keep[0] == 200 and before_new[2] is None
    targets: list[tuple[str, Mapping[str, str]]] = [(NEW, {}), (KEEP, {})]
    if index_params is not None:
        targets.append((KEEP, index_params))
    headers = {**t.auth, **request.pop("headers", {})}
    payload = request.pop("data", None)
    for suffix, params in targets:
        if payload is not None:  # a fresh stream per request (large bodies must not be bytes)
            request["data"] = io.BytesIO(payload)
        answer = await call(
            node, "PUT", node.api(t.handle(suffix)), headers=headers, params=params, **request
        )
        assert_error(answer, http=http, code=code, says=says)
    assert await snapshot(node, store, t, t.handle(KEEP)) == before_keep
    assert await snapshot(node, store, t, t.handle(NEW)) == before_new
    assert await listing(node, t) == [t.handle(KEEP)]


# --- malformed handles in the path ---------------------------------------------------------

MALFORMED_HANDLES = [
    pytest.param("", "handle is empty", id="empty"),
    pytest.param("{p}", "has no '/'", id="no-slash"),
    pytest.param("{p}/", "empty suffix", id="empty-suffix"),
    pytest.param("/abc", "empty prefix", id="empty-prefix"),
    pytest.param("{p}./abc", "empty dotted segment", id="empty-prefix-segment"),
    pytest.param("{p}/a%01b", "control character U+0001", id="ctrl-01"),
    pytest.param("{p}/a%7Fb", "control character U+007F", id="ctrl-7f"),
    pytest.param("{p}/a%0Ab", "control character U+000A", id="ctrl-newline"),
    pytest.param("{p}/a%0Db", "control character U+000D", id="ctrl-cr"),
    pytest.param("{p}/a%09b", "control character U+0009", id="ctrl-tab"),
    pytest.param("{p}/a%00b", "control character U+0000", id="ctrl-nul"),
    pytest.param("{p}/" + "x" * 2100, "longer than 2048 bytes", id="over-2KiB"),
    pytest.param("{p}/" + "%C3%A9" * 1100, "longer than 2048 bytes", id="over-2KiB-utf8"),
    pytest.param("{p}/a%ff%feb", "not valid UTF-8", id="utf8-ff-fe"),
    pytest.param("{p}/a%80", "not valid UTF-8", id="utf8-lone-continuation"),
    pytest.param("{p}/a%C3", "not valid UTF-8", id="utf8-truncated"),
    pytest.param("{p}/%C0%AF", "not valid UTF-8", id="utf8-overlong"),
    pytest.param("{p}/%ED%A0%80", "not valid UTF-8", id="utf8-surrogate"),
]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize(("template", "says"), MALFORMED_HANDLES)
async def test_malformed_handle_in_path(
    node: RunningNode,
    store: Store,
    tenant: TenantFactory,
    method: str,
    template: str,
    says: str,
) -> None:
    t = await with_record(tenant, node)
    before = await snapshot(node, store, t, t.handle(KEEP))
    url = raw(node, "/api/handles/" + template.format(p=t.prefix))
    body = {"values": [URL_VALUE]} if method == "PUT" else None
    answer = await call(node, method, url, headers=t.auth, json=body)
    assert_error(answer, http=400, code=102, says=says)
    # nothing was written or removed under the tenant's prefix
    assert await listing(node, t) == [t.handle(KEEP)]
    assert await snapshot(node, store, t, t.handle(KEEP)) == before


# --- bodies that are not JSON, or not sent as JSON -----------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"not json", id="text"),
        pytest.param(b'{"values": [', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"{'values': []}", id="single-quotes"),
        pytest.param(b'{"values": [{"index": 1,}]}', id="trailing-comma"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b'{"values": [] } extra', id="trailing-garbage"),
    ],
)
async def test_body_not_json(
    node: RunningNode, store: Store, tenant: TenantFactory, payload: bytes
) -> None:
    t = await with_record(tenant, node)
    await assert_writes_refused(
        node,
        store,
        t,
        http=400,
        code=4,
        says="not valid JSON",
        index_params={"index": "1"},
        data=payload,
        headers={"Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/octet-stream",
        "application/xml",
        "application/x-www-form-urlencoded",
    ],
)
async def test_content_type_not_json(
    node: RunningNode, store: Store, tenant: TenantFactory, content_type: str
) -> None:
    t = await with_record(tenant, node)
    await assert_writes_refused(
        node,
        store,
        t,
        http=415,
        code=4,
        says="Content-Type: application/json",
        index_params={"index": "1"},
        data=json.dumps({"values": [URL_VALUE]}).encode(),
        headers={"Content-Type": content_type},
    )


async def test_json_content_type_with_charset_is_accepted(
    node: RunningNode, tenant: TenantFactory
) -> None:
    """Control for the 415 test: parameters of application/json are fine."""
    t = await tenant()
    answer = await call(
        node,
        "PUT",
        node.api(t.handle(NEW)),
        headers={**t.auth, "Content-Type": "application/json; charset=utf-8"},
        data=json.dumps({"values": [URL_VALUE]}).encode(),
    )
    assert answer[:2] == (201, {"responseCode": 1, "handle": t.handle(NEW)})


# --- invalid values ------------------------------------------------------------------------

ADMIN_REF = {"handle": "0.NA/88.118.1", "index": 300, "permissions": "011111111111"}


def _v(**fields: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"index": 1, "type": "URL", "data": "https://example.com/x"}
    for name, given in fields.items():
        if given is _DROP:
            value.pop(name)
        else:
            value[name] = given
    return value


_DROP = object()

BAD_BODIES = [
    # shape of the body
    pytest.param(42, 'body must be {"values": [...]}', id="body-number"),
    pytest.param("values", 'body must be {"values": [...]}', id="body-string"),
    pytest.param({"values": "x"}, 'body must be {"values": [...]}', id="values-not-array"),
    pytest.param({"values": [5]}, "each value must be a JSON object", id="value-not-object"),
    # missing fields
    pytest.param([_v(index=_DROP)], "no 'index'", id="missing-index"),
    pytest.param([_v(type=_DROP)], "'type' must be a non-empty string", id="missing-type"),
    pytest.param([_v(data=_DROP)], "no 'data'", id="missing-data"),
    pytest.param([_v(data={"format": "string"})], "data has no 'value'", id="missing-data-value"),
    # wrong-typed fields
    pytest.param([_v(index=[1])], "index must be an integer, got list", id="index-list"),
    pytest.param([_v(index=1.5)], "index must be an integer, got float", id="index-float"),
    pytest.param([_v(index=True)], "got a boolean", id="index-bool"),
    pytest.param([_v(index="abc")], "index must be an integer, got str", id="index-string"),
    pytest.param([_v(index=None)], "index must be an integer", id="index-null"),
    pytest.param([_v(type=5)], "'type' must be a non-empty string", id="type-number"),
    pytest.param([_v(type="")], "'type' must be a non-empty string", id="type-empty"),
    pytest.param([_v(type="U\x01RL")], "control characters", id="type-control-char"),
    pytest.param([_v(type="T" * 257)], "too long", id="type-too-long"),
    pytest.param([_v(data=5)], "'data' must be a string or an object", id="data-number"),
    pytest.param([_v(data=None)], "'data' must be a string or an object", id="data-null"),
    pytest.param([_v(data=["a"])], "'data' must be a string or an object", id="data-list"),
    pytest.param(
        [_v(data={"format": "string", "value": 5})],
        "data of format string must be a string",
        id="string-data-number",
    ),
    pytest.param([_v(ttl=-1)], "ttl must be an integer", id="ttl-negative"),
    pytest.param([_v(ttl="abc")], "ttl must be an integer", id="ttl-abc"),
    pytest.param([_v(ttl=1.5)], "ttl must be an integer", id="ttl-float"),
    pytest.param([_v(ttl=2**31)], "ttl must be an integer", id="ttl-too-big"),
    pytest.param([_v(permissions="11")], "permissions must be four characters", id="perms-11"),
    pytest.param([_v(permissions="11a0")], "permissions must be four characters", id="perms-11a0"),
    pytest.param([_v(permissions=1110)], "permissions must be four characters", id="perms-number"),
    pytest.param([_v(permissions="11100")], "permissions must be four characters", id="perms-five"),
    # formats and data
    pytest.param(
        [_v(data={"format": "xml", "value": "<a/>"})], "unknown data format 'xml'", id="format-xml"
    ),
    pytest.param([_v(data={"format": 7, "value": "x"})], "unknown data format", id="format-number"),
    pytest.param(
        [_v(data={"format": "base64", "value": "not*base64!"})],
        "data is not valid base64",
        id="bad-base64",
    ),
    pytest.param(
        [_v(data={"format": "base64", "value": "abc"})],
        "data is not valid base64",
        id="base64-bad-padding",
    ),
    pytest.param(
        [_v(data={"format": "hex", "value": "zz"})], "data is not valid hex", id="bad-hex"
    ),
    pytest.param(
        [_v(data={"format": "hex", "value": "abc"})], "data is not valid hex", id="hex-odd-length"
    ),
    pytest.param(
        [_v(data={"format": "vlist", "value": "0.NA/x"})],
        "data of format vlist must be an array",
        id="vlist-not-array",
    ),
    # indexes
    pytest.param([_v(index=0)], "must be between 1 and 2147483647, got 0", id="index-0"),
    pytest.param([_v(index=-1)], "must be between 1 and 2147483647, got -1", id="index-negative"),
    pytest.param([_v(index=2**31)], "got 2147483648", id="index-too-big"),
    pytest.param([_v(), _v(type="EMAIL")], "index 1 appears more than once", id="duplicate"),
    pytest.param([_v(), _v(index="1")], "index 1 appears more than once", id="duplicate-str"),
    # HS_ADMIN
    pytest.param(
        [_v(type="HS_ADMIN", data="0.NA/88.118.1")],
        "HS_ADMIN data must have format admin",
        id="admin-as-string",
    ),
    pytest.param(
        [_v(type="hs_admin", data={"format": "hex", "value": "00"})],
        "HS_ADMIN data must have format admin",
        id="admin-as-hex",
    ),
    pytest.param(
        [
            _v(
                type="HS_ADMIN",
                data={"format": "admin", "value": {**ADMIN_REF, "permissions": "11"}},
            )
        ],
        "admin permissions must be twelve characters",
        id="admin-perms-short",
    ),
    pytest.param(
        [
            _v(
                type="HS_ADMIN",
                data={"format": "admin", "value": {**ADMIN_REF, "permissions": "1111111111112"}},
            )
        ],
        "admin permissions must be twelve characters",
        id="admin-perms-13",
    ),
    pytest.param(
        [_v(type="HS_ADMIN", data={"format": "admin", "value": {**ADMIN_REF, "permissions": 7}})],
        "admin permissions must be twelve characters",
        id="admin-perms-number",
    ),
    pytest.param(
        [_v(type="HS_ADMIN", data={"format": "admin", "value": {"index": 300}})],
        "needs a string 'handle'",
        id="admin-no-handle",
    ),
    pytest.param(
        [_v(type="HS_ADMIN", data={"format": "admin", "value": {**ADMIN_REF, "handle": "x"}})],
        "admin handle: handle has no '/'",
        id="admin-bad-handle",
    ),
    pytest.param(
        [_v(type="HS_ADMIN", data={"format": "admin", "value": {**ADMIN_REF, "index": -3}})],
        "admin index must be between 1 and",
        id="admin-bad-index",
    ),
    pytest.param(
        [_v(type="HS_ADMIN", data={"format": "admin", "value": "0.NA/88.118.1"})],
        "admin must be an object",
        id="admin-value-string",
    ),
    # HS_SECKEY must carry a secret
    pytest.param(
        [_v(type="HS_SECKEY", data="")],
        "HS_SECKEY data must be a non-empty string",
        id="seckey-empty",
    ),
]


@pytest.mark.parametrize(("body", "says"), BAD_BODIES)
async def test_invalid_values_are_refused(
    node: RunningNode, store: Store, tenant: TenantFactory, body: Any, says: str
) -> None:
    t = await with_record(tenant, node)
    await assert_writes_refused(
        node, store, t, http=400, code=202, says=says, index_params={"index": "1"}, json=body
    )


@pytest.mark.parametrize(
    ("position", "bad", "says"),
    [
        pytest.param(
            3, {"index": 3, "type": "URL", "data": 5}, "value 3: 'data'", id="data-number"
        ),
        pytest.param(
            3,
            {"index": 3, "type": "X", "data": {"format": "hex", "value": "zz"}},
            "value 3: data is not valid hex",
            id="bad-hex",
        ),
        pytest.param(
            3, {"index": 3, "type": "HS_SECKEY", "data": ""}, "value 3: HS_SECKEY", id="seckey"
        ),
        pytest.param(3, {"index": 1, "type": "X", "data": "dup"}, "index 1 appears more", id="dup"),
    ],
)
async def test_failing_value_in_the_middle_changes_nothing(
    node: RunningNode,
    store: Store,
    tenant: TenantFactory,
    position: int,
    bad: dict[str, Any],
    says: str,
) -> None:
    """A replace whose third value is invalid leaves the old record as it was, whole."""
    t = await with_record(tenant, node)
    before = await snapshot(node, store, t, t.handle(KEEP))
    changed_url = {**URL_VALUE, "data": "https://example.com/changed"}
    changed_email = {**EMAIL_VALUE, "data": "changed@example.com"}
    extra = {"index": 4, "type": "DESC", "data": "added"}
    values: list[dict[str, Any]] = [changed_url, changed_email, extra]
    values.insert(position - 1, bad)
    # whole-record replace
    answer = await call(
        node, "PUT", node.api(t.handle(KEEP)), headers=t.auth, json={"values": values}
    )
    assert_error(answer, http=400, code=202, says=says)
    assert await snapshot(node, store, t, t.handle(KEEP)) == before
    # the same values sent by index
    indexes = sorted({int(v["index"]) for v in values})
    url = node.api(t.handle(KEEP)) + "?" + "&".join(f"index={i}" for i in indexes)
    answer = await call(node, "PUT", url, headers=t.auth, json={"values": values})
    assert_error(answer, http=400, code=202, says=says)
    assert await snapshot(node, store, t, t.handle(KEEP)) == before


async def test_record_and_value_size_limits(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    """At most 2048 values per record and 64 KiB of data per value, whole or by index."""
    t = await with_record(tenant, node)
    before = await snapshot(node, store, t, t.handle(KEEP))
    many = [{"index": i, "type": "X", "data": "v"} for i in range(1, 2050)]
    answer = await call(node, "PUT", node.api(t.handle(KEEP)), headers=t.auth, json=many)
    assert_error(answer, http=400, code=202, says="at most 2048 values")
    big = [{"index": 9, "type": "X", "data": "x" * 70_000}]
    url = node.api(t.handle(KEEP)) + "?index=9"
    answer = await call(node, "PUT", url, headers=t.auth, json=big)
    assert_error(answer, http=400, code=202, says="larger than 65536 bytes")
    assert await snapshot(node, store, t, t.handle(KEEP)) == before
    # a record at the limit takes no more values by index either
    full = [{"index": i, "type": "X", "data": "v"} for i in range(1, 2049)]
    answer = await call(node, "PUT", node.api(t.handle("full")), headers=t.auth, json=full)
    assert answer[0] == 201, answer
    url = node.api(t.handle("full")) + "?index=5000"
    one = [{"index": 5000, "type": "X", "data": "v"}]
    answer = await call(node, "PUT", url, headers=t.auth, json=one)
    assert_error(answer, http=400, code=202, says="at most 2048 values")


# --- body size -----------------------------------------------------------------------------


async def test_body_over_the_size_limit(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await with_record(tenant, node)
    big = {"values": [{**URL_VALUE, "data": "x" * (1024 * 1024 + 16)}]}
    await assert_writes_refused(
        node,
        store,
        t,
        http=413,
        code=4,
        says="larger than the limit",
        index_params={"index": "1"},
        data=json.dumps(big).encode(),
        headers={"Content-Type": "application/json"},
    )


# --- query parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "values", "code", "says"),
    [
        pytest.param("index=1", [EMAIL_VALUE], 202, "must be the same", id="other-index"),
        pytest.param("index=1&index=2", [URL_VALUE], 202, "differ at 2", id="fewer-values"),
        pytest.param("index=1", [URL_VALUE, EMAIL_VALUE], 202, "differ at 2", id="more-values"),
        pytest.param("index=3", [URL_VALUE, EMAIL_VALUE], 202, "must be the same", id="disjoint"),
        pytest.param("index=abc", [URL_VALUE], 4, "query parameter index", id="index-abc"),
        pytest.param("index=0", [URL_VALUE], 4, "between 1 and", id="index-0"),
        pytest.param("index=-1", [URL_VALUE], 4, "query parameter index", id="index-negative"),
        pytest.param("index=", [URL_VALUE], 4, "query parameter index", id="index-empty"),
    ],
)
async def test_index_params_must_match_values(
    node: RunningNode,
    store: Store,
    tenant: TenantFactory,
    query: str,
    values: list[dict[str, Any]],
    code: int,
    says: str,
) -> None:
    t = await with_record(tenant, node)
    before = await snapshot(node, store, t, t.handle(KEEP))
    changed = [{**v, "data": "changed"} for v in values]
    for suffix in (KEEP, NEW):
        url = raw(node, f"/api/handles/{t.handle(suffix)}?{query}")
        answer = await call(node, "PUT", url, headers=t.auth, json={"values": changed})
        assert_error(answer, http=400, code=code, says=says)
    assert await snapshot(node, store, t, t.handle(KEEP)) == before
    assert await listing(node, t) == [t.handle(KEEP)]


@pytest.mark.parametrize(
    ("method", "query", "says"),
    [
        pytest.param("PUT", "overwrite=maybe", "overwrite must be true or false", id="overwrite"),
        pytest.param("PUT", "overwrite=2", "overwrite must be true or false", id="overwrite-2"),
        pytest.param(
            "PUT", "mintNewSuffix=maybe", "mintNewSuffix must be true or false", id="mint"
        ),
        pytest.param(
            "PUT",
            "index=1&overwrite=maybe",
            "overwrite must be true or false",
            id="index-overwrite",
        ),
        pytest.param(
            "GET", "publicOnly=maybe", "publicOnly must be true or false", id="publicOnly"
        ),
    ],
)
async def test_bad_query_flags(
    node: RunningNode, store: Store, tenant: TenantFactory, method: str, query: str, says: str
) -> None:
    t = await with_record(tenant, node)
    before = await snapshot(node, store, t, t.handle(KEEP))
    changed = {"values": [{**URL_VALUE, "data": "changed"}]}
    for suffix in (KEEP, NEW):
        url = raw(node, f"/api/handles/{t.handle(suffix)}?{query}")
        body = changed if method == "PUT" else None
        answer = await call(node, method, url, headers=t.auth, json=body)
        assert_error(answer, http=400, code=4, says=says)
    assert await snapshot(node, store, t, t.handle(KEEP)) == before
    assert await listing(node, t) == [t.handle(KEEP)]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        pytest.param({"page": "-1"}, "page must be an integer from 0", id="page-negative"),
        pytest.param({"page": "abc"}, "page must be an integer from 0", id="page-abc"),
        pytest.param({"page": "1.5"}, "page must be an integer from 0", id="page-float"),
        pytest.param({"page": ""}, "page must be an integer from 0", id="page-empty"),
        pytest.param({"page": str(2**31 + 1)}, "page must be an integer from 0", id="page-huge"),
        pytest.param({"pageSize": "abc"}, "pageSize must be an integer from 0", id="size-abc"),
        pytest.param({"pageSize": "-5"}, "pageSize must be an integer from 0", id="size-negative"),
        pytest.param(
            {"pageSize": "100000"}, "pageSize must be an integer from 0 to 10000", id="size-100000"
        ),
    ],
)
async def test_bad_paging_params(
    node: RunningNode, tenant: TenantFactory, params: dict[str, str], says: str
) -> None:
    t = await with_record(tenant, node)
    answer = await call(
        node, "GET", f"{node.url}/api/handles", params={"prefix": t.prefix, **params}
    )
    assert_error(answer, http=400, code=4, says=says)


@pytest.mark.parametrize(
    ("params", "code", "says"),
    [
        pytest.param({}, 4, "prefix is required", id="missing"),
        pytest.param({"prefix": ""}, 4, "prefix is required", id="empty"),
        pytest.param({"pageSize": "2"}, 4, "prefix is required", id="missing-with-paging"),
        pytest.param({"prefix": "88.118.1/x"}, 102, "must not contain '/'", id="with-slash"),
        pytest.param({"prefix": "88..1"}, 102, "empty dotted segment", id="empty-segment"),
        pytest.param({"prefix": "88.\x01"}, 102, "control character", id="control-char"),
        pytest.param({"prefix": "99.404.1"}, 301, "not homed on this node", id="not-homed"),
    ],
)
async def test_list_handles_needs_a_valid_prefix(
    node: RunningNode, params: dict[str, str], code: int, says: str
) -> None:
    answer = await call(node, "GET", f"{node.url}/api/handles", params=params)
    assert_error(answer, http=400, code=code, says=says)


# --- endpoints and methods -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/api/nothing", "/api/handle/88.118.1/x", "/api", "/api/prefixes/x", "/hrls", "/metrics/x"],
)
async def test_unknown_endpoint_is_404_json(node: RunningNode, path: str) -> None:
    answer = await call(node, "GET", f"{node.url}{path}")
    assert_error(answer, http=404, code=4, says="no such endpoint")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        pytest.param("POST", "/api/handles/{h}", "PUT", id="post-handle"),
        pytest.param("PATCH", "/api/handles/{h}", "PUT", id="patch-handle"),
        pytest.param("POST", "/api/handles", "GET", id="post-list"),
        pytest.param("DELETE", "/api/handles", "GET", id="delete-list"),
        pytest.param("PUT", "/api/prefixes", "GET", id="put-prefixes"),
    ],
)
async def test_wrong_method_is_405_json(
    node: RunningNode, store: Store, tenant: TenantFactory, method: str, path: str, allowed: str
) -> None:
    t = await with_record(tenant, node)
    before = await snapshot(node, store, t, t.handle(KEEP))
    for suffix in (KEEP, NEW):
        url = f"{node.url}{path.format(h=t.handle(suffix))}"
        answer = await call(
            node, method, url, headers=t.auth, json={"values": [{**URL_VALUE, "data": "changed"}]}
        )
        assert_error(answer, http=405, code=4, says="method not allowed")
        assert allowed in answer[2].get("Allow", ""), answer[2]
    assert await snapshot(node, store, t, t.handle(KEEP)) == before
    assert await listing(node, t) == [t.handle(KEEP)]
