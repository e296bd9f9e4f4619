"""Authentication and authorisation from a client's side: who may write what, and who sees
which values. Every refused write is read back to prove it changed nothing."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from multidict import CIMultiDictProxy

from registry import handle as hs
from registry.permissions import ALL, Perm
from registry.store import Record, Store
from tests.conftest import EMAIL_VALUE, URL_VALUE, RunningNode, Tenant, TenantFactory

CHANGED_URL = {**URL_VALUE, "data": "https://example.com/changed"}
KEEP = "keep"
NEW = "new"
Answer = tuple[int, dict[str, Any], CIMultiDictProxy[str]]
Snapshot = tuple[int, dict[str, Any], Record | None, list[str]]


# --- helpers -------------------------------------------------------------------------------


def basic(
    user: str, secret: str, *, encode_user: bool = True, encode_secret: bool = False
) -> dict[str, str]:
    """HTTP Basic credentials, UTF-8, optionally percent-encoding either part."""
    user = quote(user, safe="") if encode_user else user
    secret = quote(secret, safe="") if encode_secret else secret
    token = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def raw_auth(header: str) -> dict[str, str]:
    return {"Authorization": header}


async def call(
    node: RunningNode,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
) -> Answer:
    async with node.session.request(method, url, headers=headers, json=json) as r:
        assert r.content_type == "application/json", (r.status, await r.text())
        return r.status, await r.json(), r.headers


def assert_error(answer: Answer, *, http: int, codes: tuple[int, ...], says: str = "") -> None:
    status, body, headers = answer
    assert status == http, body
    assert {"responseCode", "handle", "message"} <= set(body), body
    assert body["responseCode"] in codes, body
    assert says in body["message"], body
    if http == 401:
        assert "WWW-Authenticate" in headers, headers
        assert headers["WWW-Authenticate"].lower().startswith("basic"), headers


def assert_auth_needed(answer: Answer, says: str = "") -> None:
    assert_error(answer, http=401, codes=(402,), says=says)


async def put(
    node: RunningNode, handle: str, body: Any, auth: Mapping[str, str], query: str = ""
) -> Answer:
    return await call(
        node, "PUT", node.api(handle) + (f"?{query}" if query else ""), headers=auth, json=body
    )


async def delete(
    node: RunningNode, handle: str, auth: Mapping[str, str], query: str = ""
) -> Answer:
    return await call(
        node, "DELETE", node.api(handle) + (f"?{query}" if query else ""), headers=auth
    )


async def get(
    node: RunningNode, handle: str, auth: Mapping[str, str] | None = None, query: str = ""
) -> Answer:
    return await call(node, "GET", node.api(handle) + (f"?{query}" if query else ""), headers=auth)


async def snapshot(node: RunningNode, store: Store, t: Tenant, suffix: str) -> Snapshot:
    """What the owner reads through the API, the row in PostgreSQL, and the prefix listing."""
    status, body, _ = await get(node, t.handle(suffix), t.auth)
    async with node.session.get(
        f"{node.url}/api/handles", params={"prefix": t.prefix}, headers=t.auth
    ) as r:
        listed = list((await r.json())["handles"])
    return status, body, await store.get(hs.parse(t.handle(suffix))), listed


async def prefix_snapshot(node: RunningNode, store: Store, t: Tenant) -> tuple[Any, ...]:
    status, body, _ = await get(node, f"0.NA/{t.prefix}", t.auth)
    return status, body, await store.get(hs.prefix_record(t.prefix))


async def with_record(tenant: TenantFactory, node: RunningNode, **kwargs: str) -> Tenant:
    """A fresh tenant holding ``<prefix>/keep`` with values 1 and 2."""
    t = await tenant(**kwargs)
    answer = await put(node, t.handle(KEEP), {"values": [URL_VALUE, EMAIL_VALUE]}, t.auth)
    assert answer[0] == 201, answer
    return t


@dataclass(frozen=True)
class Op:
    """One kind of write against a tenant's ``keep`` (or a new) handle."""

    method: str
    suffix: str | None  # None: the bare prefix (mintNewSuffix)
    query: str = ""
    body: Any = None

    def url(self, node: RunningNode, prefix: str) -> str:
        path = prefix if self.suffix is None else f"{prefix}/{self.suffix}"
        return node.api(path) + (f"?{self.query}" if self.query else "")

    async def send(self, node: RunningNode, prefix: str, auth: Mapping[str, str] | None) -> Answer:
        return await call(node, self.method, self.url(node, prefix), headers=auth, json=self.body)


WRITE_OPS = {
    "create": Op("PUT", NEW, body={"values": [URL_VALUE]}),
    "mint": Op("PUT", None, "mintNewSuffix=true", {"values": [URL_VALUE]}),
    "replace": Op("PUT", KEEP, body={"values": [CHANGED_URL]}),
    "add-value": Op(
        "PUT", KEEP, "index=3&overwrite=false", {"values": [{**EMAIL_VALUE, "index": 3}]}
    ),
    "change-value": Op("PUT", KEEP, "index=1", {"values": [CHANGED_URL]}),
    "delete-value": Op("DELETE", KEEP, "index=2"),
    "delete": Op("DELETE", KEEP),
}
WRITES = [pytest.param(op, id=name) for name, op in WRITE_OPS.items()]


async def assert_refused(
    node: RunningNode,
    store: Store,
    owner: Tenant,
    op: Op,
    auth: Mapping[str, str] | None,
    check: Callable[[Answer], None],
) -> None:
    """Send ``op`` against ``owner``'s prefix with ``auth``; check the answer; prove that
    ``owner``'s records are exactly as before."""
    before = await snapshot(node, store, owner, KEEP)
    before_new = await snapshot(node, store, owner, NEW)
    before_prefix = await prefix_snapshot(node, store, owner)
    check(await op.send(node, owner.prefix, auth))
    assert await snapshot(node, store, owner, KEEP) == before
    assert await snapshot(node, store, owner, NEW) == before_new
    assert await prefix_snapshot(node, store, owner) == before_prefix


# --- authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("op", WRITES)
async def test_write_without_credentials(
    node: RunningNode, store: Store, tenant: TenantFactory, op: Op
) -> None:
    t = await with_record(tenant, node)
    await assert_refused(
        node, store, t, op, None, lambda a: assert_auth_needed(a, "authenticated admin")
    )


@pytest.mark.parametrize("op", WRITES)
async def test_write_with_wrong_secret(
    node: RunningNode, store: Store, tenant: TenantFactory, op: Op
) -> None:
    t = await with_record(tenant, node)
    other = await tenant()
    for auth in (
        basic(t.identity, "wrong-secret"),
        basic(t.identity, t.secret + "x"),
        basic(t.identity, ""),
        basic(t.identity, other.secret),  # a real secret, of another identity
        basic(t.identity, t.secret.upper()),
    ):
        await assert_refused(
            node, store, t, op, auth, lambda a: assert_auth_needed(a, "identity or secret is wrong")
        )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


GARBAGE = [
    pytest.param("Basic !!!not-base64!!!", "not valid base64", id="basic-not-base64"),
    pytest.param("Basic " + _b64(b"300:0.NA/x:y")[:-2], "not valid base64", id="basic-truncated"),
    pytest.param("Basic " + _b64(b"\xff\xfe:\xff"), "not valid base64 UTF-8", id="basic-not-utf8"),
    pytest.param("Basic", "must be an identity", id="basic-no-token"),
    pytest.param("Basic " + _b64(b"no-colon-at-all"), "must be an identity", id="basic-no-colon"),
    pytest.param("Basic " + _b64(b"admin:secret"), "must be an identity", id="basic-not-identity"),
    pytest.param("Basic " + _b64(b"300:secret"), "must be an identity", id="basic-index-only"),
    pytest.param(
        "Basic " + _b64(b"300:0.NA/:s"), "identity handle is invalid", id="basic-bad-handle"
    ),
    pytest.param("Bearer abc.def.ghi", "not supported", id="bearer"),
    pytest.param('Digest username="x", realm="y"', "not supported", id="digest"),
    pytest.param("Negotiate YIIB", "not supported", id="negotiate"),
    pytest.param("garbage", "not supported", id="no-scheme"),
]


@pytest.mark.parametrize(("header", "says"), GARBAGE)
async def test_write_with_garbage_authorization(
    node: RunningNode, store: Store, tenant: TenantFactory, header: str, says: str
) -> None:
    t = await with_record(tenant, node)
    for op in (Op("PUT", NEW, body={"values": [URL_VALUE]}), Op("DELETE", KEEP)):
        await assert_refused(
            node, store, t, op, raw_auth(header), lambda a: assert_auth_needed(a, says)
        )


@pytest.mark.parametrize(
    "user",
    [
        pytest.param("300:0.NA/99.404.7", id="prefix-not-homed"),
        pytest.param("300:{p}/nobody", id="no-such-handle"),
        pytest.param("301:0.NA/{p}", id="no-such-index"),
        pytest.param("100:0.NA/{p}", id="index-is-not-a-key"),
        pytest.param("300:{p}/keep", id="handle-without-key"),
        pytest.param("1:{p}/keep", id="index-is-a-url"),
    ],
)
async def test_write_as_identity_that_does_not_exist(
    node: RunningNode, store: Store, tenant: TenantFactory, user: str
) -> None:
    t = await with_record(tenant, node)
    identity = user.format(p=t.prefix)
    for auth in (basic(identity, t.secret), basic(identity, t.secret, encode_user=False)):
        for op in (Op("PUT", NEW, body={"values": [URL_VALUE]}), Op("DELETE", KEEP)):
            await assert_refused(
                node,
                store,
                t,
                op,
                auth,
                lambda a: assert_auth_needed(a, "identity or secret is wrong"),
            )


TRICKY_SECRET = "p@ss:w/rd %41+é&=?#"


@pytest.mark.parametrize("tricky", [False, True], ids=["plain-secret", "tricky-secret"])
@pytest.mark.parametrize("encode_secret", [False, True], ids=["raw-secret", "encoded-secret"])
@pytest.mark.parametrize("encode_user", [True, False], ids=["encoded-identity", "raw-identity"])
async def test_basic_auth_forms(
    node: RunningNode, tenant: TenantFactory, encode_user: bool, encode_secret: bool, tricky: bool
) -> None:
    """The identity percent-encoded (pyhandle) or raw, the secret raw or percent-encoded."""
    t = await tenant(secret=TRICKY_SECRET) if tricky else await tenant()
    auth = basic(t.identity, t.secret, encode_user=encode_user, encode_secret=encode_secret)
    status, body, _ = await put(node, t.handle("via-basic"), {"values": [URL_VALUE]}, auth)
    assert (status, body) == (201, {"responseCode": 1, "handle": t.handle("via-basic")})
    status, body, _ = await get(node, f"0.NA/{t.prefix}", auth, "publicOnly=false")
    assert status == 200 and "HS_SECKEY" in [v["type"] for v in body["values"]]
    status, body, _ = await delete(node, t.handle("via-basic"), auth)
    assert (status, body["responseCode"]) == (200, 1)
    # and the conftest form (what pyhandle sends) works for the same tenant
    status, _, _ = await put(node, t.handle("via-conftest"), {"values": [URL_VALUE]}, t.auth)
    assert status == 201


async def test_percent_decoding_does_not_open_other_secrets(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    """A secret that is literally ``%41`` is not matched by ``A`` (only the raw or the
    encoded form of the real secret is)."""
    t = await with_record(tenant, node, secret="key%41")
    op = Op("PUT", NEW, body={"values": [URL_VALUE]})
    await assert_refused(
        node, store, t, op, basic(t.identity, "keyA"), lambda a: assert_auth_needed(a, "wrong")
    )
    status, _, _ = await put(
        node, t.handle(NEW), {"values": [URL_VALUE]}, basic(t.identity, "key%2541")
    )
    assert status == 201


# --- cross-tenant --------------------------------------------------------------------------


def _forbidden(answer: Answer) -> None:
    assert_error(answer, http=403, codes=(400, 401), says="")


@pytest.mark.parametrize("op", WRITES)
async def test_admin_of_one_prefix_cannot_write_another(
    node: RunningNode, store: Store, tenant: TenantFactory, op: Op
) -> None:
    a = await with_record(tenant, node)
    b = await with_record(tenant, node)
    await assert_refused(node, store, b, op, a.auth, _forbidden)
    # B itself still may (the refusal was about A, not about the operation)
    status, _, _ = await op.send(node, b.prefix, b.auth)
    assert status in (200, 201)


def admin_value(index: int, handle: str, perms: str = ALL) -> dict[str, Any]:
    """An HS_ADMIN value naming ``300:<handle>``."""
    ref = {"handle": handle, "index": 300, "permissions": perms}
    return {"index": index, "type": "HS_ADMIN", "data": {"format": "admin", "value": ref}}


TAKE_OVER: dict[str, Callable[[Tenant], Op]] = {
    "add-admin": lambda a: Op(
        "PUT", "", "index=101&overwrite=false", {"values": [admin_value(101, f"0.NA/{a.prefix}")]}
    ),
    "change-secret": lambda a: Op(
        "PUT", "", "index=300", {"values": [{"index": 300, "type": "HS_SECKEY", "data": "mine"}]}
    ),
    "replace-record": lambda a: Op(
        "PUT", "", "", {"values": [admin_value(100, f"0.NA/{a.prefix}")]}
    ),
    "remove-admin": lambda a: Op("DELETE", "", "index=100"),
    "delete-record": lambda a: Op("DELETE", ""),
}


@pytest.mark.parametrize("op", TAKE_OVER.values(), ids=TAKE_OVER.keys())
async def test_admin_of_one_prefix_cannot_take_over_another(
    node: RunningNode, store: Store, tenant: TenantFactory, op: Callable[[Tenant], Op]
) -> None:
    """A may not change B's prefix record ``0.NA/B`` (its admins and its secret)."""
    a = await with_record(tenant, node)
    b = await with_record(tenant, node)
    before = await prefix_snapshot(node, store, b)
    template = op(a)
    url = node.api(f"0.NA/{b.prefix}") + (f"?{template.query}" if template.query else "")
    answer = await call(node, template.method, url, headers=a.auth, json=template.body)
    _forbidden(answer)
    assert await prefix_snapshot(node, store, b) == before
    # B's secret still works, A still cannot write under B
    status, _, _ = await put(node, b.handle(NEW), {"values": [URL_VALUE]}, b.auth)
    assert status == 201
    _forbidden(await put(node, b.handle("again"), {"values": [URL_VALUE]}, a.auth))


# --- prefixes not homed here ---------------------------------------------------------------


@pytest.mark.parametrize("op", WRITES)
@pytest.mark.parametrize("authenticated", [True, False], ids=["admin", "anonymous"])
async def test_write_to_prefix_not_homed_here(
    node: RunningNode, store: Store, tenant: TenantFactory, op: Op, authenticated: bool
) -> None:
    t = await tenant()
    elsewhere = "99.404.1"
    answer = await op.send(node, elsewhere, t.auth if authenticated else None)
    assert_error(answer, http=400, codes=(301,), says=f"prefix {elsewhere} is not homed")
    for suffix in (KEEP, NEW):
        assert await store.get(hs.parse(f"{elsewhere}/{suffix}")) is None
    assert not await store.is_homed(elsewhere)


@pytest.mark.parametrize(
    ("method", "query", "body"),
    [
        ("PUT", "", {"values": [URL_VALUE]}),
        ("PUT", "index=1", {"values": [URL_VALUE]}),
        ("DELETE", "", None),
        ("DELETE", "index=100", None),
    ],
)
async def test_write_prefix_record_of_prefix_not_homed_here(
    node: RunningNode, store: Store, tenant: TenantFactory, method: str, query: str, body: Any
) -> None:
    t = await tenant()
    url = node.api("0.NA/99.404.2") + (f"?{query}" if query else "")
    answer = await call(node, method, url, headers=t.auth, json=body)
    assert_error(answer, http=400, codes=(301,), says="not homed")
    assert await store.get(hs.prefix_record("99.404.2")) is None


# --- the prefix hierarchy ------------------------------------------------------------------


async def test_sibling_prefixes_are_separate(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    """The admin of 88.150.8 never writes under 88.150.9 or 88.150.80, nor they under it."""
    tenants = [
        await with_record(tenant, node, prefix=p) for p in ("88.150.8", "88.150.9", "88.150.80")
    ]
    for writer in tenants:
        for owner in tenants:
            if writer is owner:
                continue
            for op in WRITE_OPS.values():
                await assert_refused(node, store, owner, op, writer.auth, _forbidden)


async def test_child_prefix_admin_cannot_write_under_parent(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    parent = await with_record(tenant, node, prefix="88.151")
    child = await with_record(tenant, node, prefix="88.151.1")
    for op in WRITE_OPS.values():
        await assert_refused(node, store, parent, op, child.auth, _forbidden)


# --- a second admin identity created through the API ---------------------------------------

SECOND_SECRET = "second-secret"


async def second_admin(
    node: RunningNode, t: Tenant, perms: str, *, target: str = "target"
) -> dict[str, str]:
    """Create ``<prefix>/admin2`` holding an HS_SECKEY at 300 and ``<prefix>/<target>`` whose
    HS_ADMIN at 101 names ``300:<prefix>/admin2`` with ``perms``; answer admin2's credentials."""
    keyed = {"values": [{"index": 300, "type": "HS_SECKEY", "data": SECOND_SECRET}]}
    assert (await put(node, t.handle("admin2"), keyed, t.auth))[0] == 201
    assert (await put(node, t.handle(target), {"values": [URL_VALUE, EMAIL_VALUE]}, t.auth))[
        0
    ] == 201
    admin = admin_value(101, t.handle("admin2"), perms)
    answer = await put(
        node, t.handle(target), {"values": [admin]}, t.auth, "index=101&overwrite=false"
    )
    assert answer[0] == 201, answer
    return basic(f"300:{t.handle('admin2')}", SECOND_SECRET)


async def test_second_admin_modifies_its_handle_only(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await with_record(tenant, node)
    admin2 = await second_admin(node, t, "011111110011")
    # the secret is stored hashed and hidden from the public
    status, body, _ = await get(node, t.handle("admin2"))
    assert status == 200 and SECOND_SECRET not in str(body)
    assert "HS_SECKEY" not in [v["type"] for v in body["values"]]
    # on the handle whose HS_ADMIN names it: change, add, remove values
    status, _, _ = await put(node, t.handle("target"), {"values": [CHANGED_URL]}, admin2, "index=1")
    assert status == 200
    extra = {"index": 5, "type": "DESC", "data": "by admin2"}
    status, _, _ = await put(
        node, t.handle("target"), {"values": [extra]}, admin2, "index=5&overwrite=false"
    )
    assert status == 201
    status, _, _ = await delete(node, t.handle("target"), admin2, "index=2")
    assert status == 200
    _, body, _ = await get(node, t.handle("target"))
    by_index = {v["index"]: v for v in body["values"]}
    assert sorted(by_index) == [1, 5, 100, 101]
    assert by_index[1]["data"]["value"] == "https://example.com/changed"
    assert by_index[5]["data"]["value"] == "by admin2"
    # everywhere else it is no admin: other handles, its own handle, new handles
    elsewhere = [
        Op("PUT", NEW, body={"values": [URL_VALUE]}),
        Op("PUT", None, "mintNewSuffix=true", {"values": [URL_VALUE]}),
        Op("PUT", KEEP, body={"values": [CHANGED_URL]}),
        Op("PUT", KEEP, "index=3&overwrite=false", {"values": [{**EMAIL_VALUE, "index": 3}]}),
        Op("PUT", KEEP, "index=1", {"values": [CHANGED_URL]}),
        Op("DELETE", KEEP, "index=2"),
        Op("DELETE", KEEP),
        # its own handle names only the prefix admin: admin2 cannot even change its key
        Op(
            "PUT",
            "admin2",
            "index=300",
            {"values": [{"index": 300, "type": "HS_SECKEY", "data": "x"}]},
        ),
        Op("PUT", "admin2", "index=1&overwrite=false", {"values": [URL_VALUE]}),
        Op("DELETE", "admin2", "index=300"),
        Op("DELETE", "admin2"),
    ]
    for op in elsewhere:
        before_admin2 = await snapshot(node, store, t, "admin2")
        await assert_refused(node, store, t, op, admin2, _forbidden)
        assert await snapshot(node, store, t, "admin2") == before_admin2
    # and the wrong secret for it is refused
    wrong = basic(f"300:{t.handle('admin2')}", "not-" + SECOND_SECRET)
    await assert_refused(
        node,
        store,
        t,
        Op("PUT", "target", "index=1", {"values": [URL_VALUE]}),
        wrong,
        lambda a: assert_auth_needed(a, "identity or secret is wrong"),
    )


def without(bit: Perm) -> str:
    """All twelve permissions but ``bit`` (bit 11 first, bit 0 last)."""
    perms = list(ALL)
    perms[11 - bit] = "0"
    return "".join(perms)


def only(*bits: Perm) -> str:
    perms = ["0"] * 12
    for bit in bits:
        perms[11 - bit] = "1"
    return "".join(perms)


ADMIN_102 = admin_value(102, "0.NA/88.118.1")
CHANGED_ADMIN_100 = admin_value(100, "0.NA/88.118.1")

BIT_OPS = [
    pytest.param(Perm.REMOVE_VALUE, Op("DELETE", "target", "index=1"), id="remove-value"),
    pytest.param(
        Perm.ADD_VALUE,
        Op("PUT", "target", "index=5&overwrite=false", {"values": [{**EMAIL_VALUE, "index": 5}]}),
        id="add-value",
    ),
    pytest.param(
        Perm.MODIFY_VALUE,
        Op("PUT", "target", "index=1", {"values": [CHANGED_URL]}),
        id="modify-value",
    ),
    pytest.param(Perm.DELETE_HANDLE, Op("DELETE", "target"), id="delete-handle"),
    pytest.param(Perm.REMOVE_ADMIN, Op("DELETE", "target", "index=100"), id="remove-admin"),
    pytest.param(
        Perm.ADD_ADMIN, Op("PUT", "target", "index=102", {"values": [ADMIN_102]}), id="add-admin"
    ),
    pytest.param(
        Perm.MODIFY_ADMIN,
        Op("PUT", "target", "index=100", {"values": [CHANGED_ADMIN_100]}),
        id="modify-admin",
    ),
]


@pytest.mark.parametrize(("bit", "op"), BIT_OPS)
async def test_admin_permission_bits_are_honoured(
    node: RunningNode, store: Store, tenant: TenantFactory, bit: Perm, op: Op
) -> None:
    t = await tenant()
    lacking = await second_admin(node, t, without(bit))
    before = await snapshot(node, store, t, "target")
    answer = await op.send(node, t.prefix, lacking)
    assert_error(answer, http=403, codes=(401,), says=f"lacks the {bit.name} permission")
    assert await snapshot(node, store, t, "target") == before
    # holding just that bit (plus nothing else), the same operation succeeds: the bit
    # order is bit 11 first, bit 0 last
    t2 = await tenant()
    holding = await second_admin(node, t2, only(bit))
    status, body, _ = await op.send(node, t2.prefix, holding)
    assert status in (200, 201), body


async def test_admin_with_only_remove_value_cannot_modify(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await tenant()
    admin2 = await second_admin(node, t, only(Perm.REMOVE_VALUE))
    assert only(Perm.REMOVE_VALUE) == "000000100000"
    for op in (
        Op("PUT", "target", "index=1", {"values": [CHANGED_URL]}),
        Op("PUT", "target", "index=6&overwrite=false", {"values": [{**EMAIL_VALUE, "index": 6}]}),
        Op("DELETE", "target"),
    ):
        before = await snapshot(node, store, t, "target")
        answer = await op.send(node, t.prefix, admin2)
        assert_error(answer, http=403, codes=(401,), says="lacks the")
        assert await snapshot(node, store, t, "target") == before
    status, _, _ = await delete(node, t.handle("target"), admin2, "index=2")
    assert status == 200


# --- non-public values ---------------------------------------------------------------------

PRIVATE = {"index": 3, "type": "NOTE", "data": "private-note-text", "permissions": "1100"}


async def test_non_public_values_are_hidden_from_anonymous_readers(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    other = await tenant()
    handle = t.handle("priv")
    assert (await put(node, handle, {"values": [URL_VALUE, PRIVATE]}, t.auth))[0] == 201

    def indexes(body: dict[str, Any]) -> list[int]:
        return sorted(v["index"] for v in body["values"])

    # anonymous: hidden, whichever way it is asked for
    status, body, _ = await get(node, handle)
    assert status == 200 and indexes(body) == [1, 100]
    assert "private-note-text" not in str(body)
    for query in ("index=3", "type=NOTE", "publicOnly=true&index=3"):
        status, body, _ = await get(node, handle, None, query)
        assert (status, body["responseCode"]) == (200, 200), (query, body)
        assert "private-note-text" not in str(body)
    status, body, _ = await get(node, handle, None, "index=1&index=3")
    assert indexes(body) == [1]
    # anonymous publicOnly=false: authentication needed
    assert_auth_needed(await get(node, handle, None, "publicOnly=false"), "publicOnly=false")
    # the authenticated admin sees it, with its permissions
    for query in ("", "publicOnly=false", "index=3"):
        status, body, _ = await get(node, handle, t.auth, query)
        assert status == 200, body
        shown = {v["index"]: v for v in body["values"]}
        assert shown[3]["data"]["value"] == "private-note-text"
        assert shown[3]["permissions"] == "1100"
    # ... unless it asks for public values only
    status, body, _ = await get(node, handle, t.auth, "publicOnly=true")
    assert status == 200 and indexes(body) == [1, 100]
    # another prefix's admin is no admin here
    status, body, _ = await get(node, handle, other.auth)
    assert status == 200 and indexes(body) == [1, 100]
    _forbidden(await get(node, handle, other.auth, "publicOnly=false"))
    # a wrong secret is refused on reads too
    assert_auth_needed(await get(node, handle, basic(t.identity, "wrong"), "publicOnly=false"))


async def test_admin_without_read_bit_does_not_see_non_public_values(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    reader = await second_admin(node, t, only(Perm.READ_VALUE))
    assert (await put(node, t.handle("target"), {"values": [PRIVATE]}, t.auth, "index=3"))[0] == 200
    status, body, _ = await get(node, t.handle("target"), reader, "publicOnly=false")
    assert status == 200 and 3 in [v["index"] for v in body["values"]]
    t2 = await tenant()
    blind = await second_admin(node, t2, without(Perm.READ_VALUE))
    assert (await put(node, t2.handle("target"), {"values": [PRIVATE]}, t2.auth, "index=3"))[
        0
    ] == 200
    status, body, _ = await get(node, t2.handle("target"), blind)
    assert status == 200 and 3 not in [v["index"] for v in body["values"]]
    _forbidden(await get(node, t2.handle("target"), blind, "publicOnly=false"))


async def test_replace_dropping_a_value_needs_remove_value(
    node: RunningNode, store: Store, tenant: TenantFactory
) -> None:
    t = await tenant()
    admin2 = await second_admin(node, t, without(Perm.REMOVE_VALUE))
    _, body, _ = await get(node, t.handle("target"), t.auth)
    kept = [v for v in body["values"] if v["index"] != 2]
    before = await snapshot(node, store, t, "target")
    answer = await put(node, t.handle("target"), {"values": kept}, admin2)
    assert_error(answer, http=403, codes=(401,), says="lacks the REMOVE_VALUE permission")
    assert await snapshot(node, store, t, "target") == before
    # the same replace keeping every value is allowed (nothing is removed)
    status, _, _ = await put(node, t.handle("target"), {"values": body["values"]}, admin2)
    assert status == 200
    assert await snapshot(node, store, t, "target") == before


# --- refused writes must not reveal which values exist --------------------------------------


@pytest.mark.parametrize(
    "op",
    [
        pytest.param(Op("DELETE", "priv", "index=3"), id="delete-existing-private"),
        pytest.param(Op("DELETE", "priv", "index=9"), id="delete-absent"),
        pytest.param(
            Op("PUT", "priv", "index=3&overwrite=false", {"values": [{**EMAIL_VALUE, "index": 3}]}),
            id="add-over-existing-private",
        ),
        pytest.param(
            Op("PUT", "priv", "index=9&overwrite=false", {"values": [{**EMAIL_VALUE, "index": 9}]}),
            id="add-absent",
        ),
    ],
)
@pytest.mark.parametrize("who", ["anonymous", "other-admin"])
async def test_refused_writes_do_not_probe_values(
    node: RunningNode, store: Store, tenant: TenantFactory, op: Op, who: str
) -> None:
    """Without the right to write, the answer is the same whether an index exists or not."""
    t = await tenant()
    other = await tenant()
    assert (await put(node, t.handle("priv"), {"values": [URL_VALUE, PRIVATE]}, t.auth))[0] == 201
    before = await snapshot(node, store, t, "priv")
    if who == "anonymous":
        assert_auth_needed(await op.send(node, t.prefix, None))
    else:
        _forbidden(await op.send(node, t.prefix, other.auth))
    assert await snapshot(node, store, t, "priv") == before


async def test_listing_is_for_the_prefix_admins_only(
    node: RunningNode, tenant: TenantFactory
) -> None:
    """A manufacturer's identifiers are not listed to anonymous callers or competitors."""
    mine, theirs = await tenant(), await tenant()
    async with node.session.put(
        node.api(mine.handle("listed")), json=[URL_VALUE], headers=mine.auth
    ) as r:
        assert r.status == 201
    url = f"{node.url}/api/handles"
    async with node.session.get(url, params={"prefix": mine.prefix}) as r:
        body = await r.json()
        assert r.status == 401 and body["responseCode"] == 402
        assert "listed" not in str(body)
    async with node.session.get(url, params={"prefix": mine.prefix}, headers=theirs.auth) as r:
        body = await r.json()
        assert r.status == 403 and body["responseCode"] == 400
        assert "listed" not in str(body)
    async with node.session.get(url, params={"prefix": mine.prefix}, headers=mine.auth) as r:
        assert r.status == 200
        assert (await r.json())["handles"] == [mine.handle("listed")]
