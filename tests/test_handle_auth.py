"""``Authorization: Handle`` challenge-response authentication and ``/api/sessions``, end to
end through real HTTP, with the independent client in ``tests/handle_client.py``.

Every refused attempt also proves nothing was written: the handle it tried to create is
read back (404) or the record it tried to change is unchanged. Requests go through a
cookie-less client so that sessions are carried by the Authorization header alone.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import handle_client as hc
import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from tests.conftest import URL_VALUE, RunningNode, Tenant, TenantFactory, running

ALL_PERMISSIONS = "111111111111"
# Index 301 of every prefix record holds the node's own key, so test keys go elsewhere.
NODE_KEY_INDEX = 301
KEY_INDEX = 310
PRIVATE = {"index": 3, "type": "NOTE", "data": "private-note-text", "permissions": "1100"}
PRIVATE_TEXT = "private-note-text"
URL_TEXT = "https://example.com/1"  # URL_VALUE's data


# --- fixtures -------------------------------------------------------------------------------


RSAKey = rsa.RSAPrivateKey
DSAKey = dsa.DSAPrivateKey
ECKey = ec.EllipticCurvePrivateKey
Ed25519Key = ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class Keys:
    rsa: RSAKey
    rsa_other: RSAKey
    dsa: DSAKey
    ec: ECKey
    ed25519: Ed25519Key

    def named(self, name: str) -> hc.PrivateKey:
        key: hc.PrivateKey = getattr(self, name)
        return key


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa_other=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        dsa=dsa.generate_private_key(key_size=2048),
        ec=ec.generate_private_key(ec.SECP256R1()),
        ed25519=ed25519.Ed25519PrivateKey.generate(),
    )


@pytest.fixture(params=["http", "https"])
async def any_node(
    request: pytest.FixtureRequest,
    db_url: str,
    tmp_path: Path,
    key_dir: Path,
    tls_files: tuple[Path, Path],
) -> AsyncIterator[RunningNode]:
    """The node over plain HTTP, and over HTTPS with TLS configured (a self-signed certificate
    made by the test), for the tests that walk every authentication method."""
    tls = tls_files if request.param == "https" else None
    async with running(db_url, tmp_path, key_dir, tls=tls) as serving:
        yield serving


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies: only the Authorization header can carry a session."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


# --- helpers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
    timeout: float | None = None,
) -> Reply:
    limit = aiohttp.ClientTimeout(total=timeout) if timeout else None
    async with http.request(method, url, headers=headers, json=json, timeout=limit) as r:
        text = await r.text()
        body: dict[str, Any] = {"_text": text} if text else {}
        if r.content_type == "application/json" and text:
            body = await r.json()
        return Reply(r.status, body, r.headers)


def authorization(header: str) -> dict[str, str]:
    return {"Authorization": header}


def api(node: RunningNode, handle: str, query: str = "") -> str:
    return node.api(handle) + (f"?{query}" if query else "")


async def write(
    http: aiohttp.ClientSession,
    node: RunningNode,
    handle: str,
    headers: Mapping[str, str] | None,
    values: list[dict[str, Any]] | None = None,
    timeout: float | None = None,
) -> Reply:
    """Create (or replace) ``handle`` with ``values`` (default: one URL value)."""
    body = {"values": values if values is not None else [URL_VALUE]}
    return await call(http, "PUT", api(node, handle), headers, body, timeout)


async def read(
    http: aiohttp.ClientSession,
    node: RunningNode,
    handle: str,
    headers: Mapping[str, str] | None = None,
    query: str = "",
) -> Reply:
    return await call(http, "GET", api(node, handle, query), headers)


async def assert_absent(http: aiohttp.ClientSession, node: RunningNode, handle: str) -> None:
    r = await read(http, node, handle)
    assert (r.status, r.body.get("responseCode")) == (404, 100), ("written!", r)


async def assert_present(http: aiohttp.ClientSession, node: RunningNode, handle: str) -> None:
    r = await read(http, node, handle)
    assert (r.status, r.body.get("responseCode")) == (200, 1), r
    assert URL_TEXT in str(r.body), r


def assert_auth_refused(r: Reply) -> None:
    """401: authentication needed / failed (responseCode 402), with a challenge."""
    assert r.status == 401, r
    if "responseCode" in r.body:
        assert r.body["responseCode"] == 402, r
    assert "WWW-Authenticate" in r.headers, r


def assert_forbidden(r: Reply) -> None:
    """403: authenticated, but not authorised (responseCode 400 or 401)."""
    assert r.status == 403, r
    assert r.body.get("responseCode") in (400, 401), r
    assert r.body.get("message"), r


def assert_session_refused(status: int, body: Mapping[str, Any]) -> None:
    """A wrong answer on /api/sessions/this: 401, ``authenticated: false`` and a message."""
    assert status == 401, body
    assert body.get("authenticated") is False, body
    assert isinstance(body.get("message"), str) and body["message"], body


def assert_session_accepted(status: int, body: Mapping[str, Any], identity: str) -> None:
    assert status == 200, body
    assert body.get("authenticated") is True, body
    assert body.get("id") == identity, body


async def new_session(http: aiohttp.ClientSession, node: RunningNode) -> hc.HandleSession:
    s = hc.HandleSession(http, node.url)
    await s.start()
    return s


async def admin_session(
    http: aiohttp.ClientSession, node: RunningNode, t: Tenant
) -> hc.HandleSession:
    """A session authenticated as the tenant's admin (HS_SECKEY, SHA256)."""
    s = await new_session(http, node)
    assert_session_accepted(*await s.authenticate_seckey(t.identity, t.secret), t.identity)
    return s


async def assert_unauthenticated(s: hc.HandleSession) -> None:
    status, body = await s.status()
    assert status == 200, body
    assert body.get("authenticated") is False, body


async def add_values(
    http: aiohttp.ClientSession,
    node: RunningNode,
    t: Tenant,
    handle: str,
    values: list[dict[str, Any]],
) -> None:
    """Add values to ``handle`` with the tenant's Basic credentials, keeping the others."""
    query = "&".join(f"index={v['index']}" for v in values)
    r = await call(http, "PUT", api(node, handle, query), t.auth, {"values": values})
    assert r.status in (200, 201), r


def admin_value(index: int, handle: str, key_index: int) -> dict[str, Any]:
    ref = {"handle": handle, "index": key_index, "permissions": ALL_PERMISSIONS}
    return {"index": index, "type": "HS_ADMIN", "data": {"format": "admin", "value": ref}}


async def grant_key(
    http: aiohttp.ClientSession,
    node: RunningNode,
    t: Tenant,
    key: hc.PrivateKey,
    fmt: str = "base64",
    *,
    key_index: int = KEY_INDEX,
    admin_index: int = 101,
) -> str:
    """Store ``key``'s public half at ``key_index`` of ``0.NA/<prefix>`` and make that
    identity an admin of the prefix (HS_ADMIN at ``admin_index``): answer the identity."""
    prefix_handle = f"0.NA/{t.prefix}"
    value = hc.pubkey_value(key_index, key.public_key(), fmt)
    await add_values(http, node, t, prefix_handle, [value])
    await add_values(
        http, node, t, prefix_handle, [admin_value(admin_index, prefix_handle, key_index)]
    )
    return f"{key_index}:{prefix_handle}"


# --- sessions -------------------------------------------------------------------------------


async def test_session_lifecycle(
    any_node: RunningNode,
    tenant: TenantFactory,
) -> None:
    node, http = any_node, any_node.session
    t = await tenant()
    s = hc.HandleSession(http, node.url)
    started = await s.start()
    assert s.session_id and s.nonce, started
    assert len(s.nonce) >= 16, "a nonce shorter than 128 bits is guessable"
    assert s.location and "/api/sessions" in s.location, s.location
    status, body = await s.status()
    assert status == 200, body
    assert body["sessionId"] == s.session_id
    assert hc.unb64(body["nonce"]) == s.nonce
    assert body["authenticated"] is False and "id" not in body, body
    # an unauthenticated session cannot write
    assert_auth_refused(await write(http, node, t.handle("early"), s.header()))
    await assert_absent(http, node, t.handle("early"))

    assert_session_accepted(*await s.authenticate_seckey(t.identity, t.secret), t.identity)
    status, body = await s.status()
    assert status == 200 and body["authenticated"] is True, body
    assert body["id"] == t.identity and body["sessionId"] == s.session_id, body
    # the session header alone now authenticates writes, more than once
    r = await write(http, node, t.handle("s1"), s.header())
    assert (r.status, r.body.get("responseCode")) == (201, 1), r
    await assert_present(http, node, t.handle("s1"))
    r = await write(http, node, t.handle("s2"), s.header())
    assert r.status == 201, r

    # another session gains nothing from it
    other = await new_session(http, node)
    assert other.session_id != s.session_id
    assert_auth_refused(await write(http, node, t.handle("other"), other.header()))
    await assert_absent(http, node, t.handle("other"))

    await s.close()
    assert_auth_refused(await write(http, node, t.handle("after"), s.header()))
    await assert_absent(http, node, t.handle("after"))
    status, body = await s.status()
    assert status == 401, body


async def test_session_can_be_authenticated_with_post(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    t = await tenant()
    s = await new_session(http, node)
    status, body = await s.authenticate_seckey(t.identity, t.secret, method="POST")
    assert_session_accepted(status, body, t.identity)
    r = await write(http, node, t.handle("posted"), s.header())
    assert r.status == 201, r


@pytest.mark.parametrize("alg", hc.SECKEY_ALGS)
async def test_seckey_algorithms(any_node: RunningNode, tenant: TenantFactory, alg: str) -> None:
    node, http = any_node, any_node.session
    t = await tenant()
    s = await new_session(http, node)
    assert_session_accepted(*await s.authenticate_seckey(t.identity, t.secret, alg), t.identity)
    r = await write(http, node, t.handle(f"by-{alg}"), s.header())
    assert (r.status, r.body.get("responseCode")) == (201, 1), r
    await assert_present(http, node, t.handle(f"by-{alg}"))


async def test_seckey_with_non_ascii_secret(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    """Secret bytes are the UTF-8 of the secret."""
    t = await tenant(secret="s\u00e9cr\u00e8t-\u2603")
    for alg in ("SHA256", "HMAC-SHA256"):
        s = await new_session(http, node)
        assert_session_accepted(*await s.authenticate_seckey(t.identity, t.secret, alg), t.identity)


PUBKEY_CASES = [
    pytest.param("rsa", "SHA256", "base64", id="rsa-sha256-binary"),
    pytest.param("rsa", "SHA1", "base64", id="rsa-sha1-binary"),
    pytest.param("rsa", "SHA256", "key", id="rsa-sha256-jwk"),
    pytest.param("dsa", "SHA1", "base64", id="dsa-sha1-binary"),
    pytest.param("dsa", "SHA256", "base64", id="dsa-sha256-binary"),
    pytest.param("ec", "SHA256", "key", id="ecdsa-p256-jwk"),
    pytest.param("ed25519", "Ed25519", "key", id="ed25519-jwk"),
]


@pytest.mark.parametrize(("key_name", "alg", "fmt"), PUBKEY_CASES)
async def test_pubkey_algorithms(
    any_node: RunningNode,
    tenant: TenantFactory,
    keys: Keys,
    key_name: str,
    alg: str,
    fmt: str,
) -> None:
    node, http = any_node, any_node.session
    t = await tenant()
    key = keys.named(key_name)
    identity = await grant_key(http, node, t, key, fmt)
    s = await new_session(http, node)
    assert_session_accepted(*await s.authenticate_pubkey(identity, key, alg), identity)
    r = await write(http, node, t.handle(f"by-{key_name}"), s.header())
    assert (r.status, r.body.get("responseCode")) == (201, 1), r
    await assert_present(http, node, t.handle(f"by-{key_name}"))


async def test_pubkey_on_a_user_handle(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """An HS_PUBKEY at 300 of ``<prefix>/user1``, admin of one handle only."""
    t = await tenant()
    user = t.handle("user1")
    r = await write(http, node, user, t.auth, [hc.pubkey_value(300, keys.rsa.public_key())])
    assert r.status == 201, r
    target = t.handle("target")
    assert (await write(http, node, target, t.auth)).status == 201
    await add_values(http, node, t, target, [admin_value(101, user, 300)])
    s = await new_session(http, node)
    assert_session_accepted(*await s.authenticate_pubkey(f"300:{user}", keys.rsa), f"300:{user}")
    extra = {"index": 5, "type": "DESC", "data": "by user1"}
    r = await call(http, "PUT", api(node, target, "index=5"), s.header(), {"values": [extra]})
    assert r.status in (200, 201), r
    assert "by user1" in str((await read(http, node, target)).body)
    # ... but it is no admin of the prefix: it cannot create handles
    assert_forbidden(await write(http, node, t.handle("not-mine"), s.header()))
    await assert_absent(http, node, t.handle("not-mine"))


async def test_pubkey_identity_index_zero_tries_every_key(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, keys: Keys
) -> None:
    t = await tenant()
    user = t.handle("user0")
    values = [
        hc.pubkey_value(300, keys.rsa_other.public_key()),  # a decoy first
        hc.pubkey_value(302, keys.rsa.public_key()),
    ]
    assert (await write(http, node, user, t.auth, values)).status == 201
    await add_values(http, node, t, f"0.NA/{t.prefix}", [admin_value(101, user, 302)])
    s = await new_session(http, node)
    status, body = await s.authenticate_pubkey(f"0:{user}", keys.rsa)
    assert status == 200 and body.get("authenticated") is True, body
    assert body.get("id") in (f"0:{user}", f"302:{user}"), body
    # authorised as the key that answered (302, named by the prefix's HS_ADMIN)
    r = await write(http, node, t.handle("by-index-0"), s.header())
    assert r.status == 201, r
    # a key the handle does not hold answers nothing
    s2 = await new_session(http, node)
    assert_session_refused(*await s2.authenticate_pubkey(f"0:{user}", keys.ec, "SHA256"))
    assert_auth_refused(await write(http, node, t.handle("by-ec"), s2.header()))
    await assert_absent(http, node, t.handle("by-ec"))


# --- one-shot: challenge, then the answered request -----------------------------------------


async def test_challenge_then_answered_write(
    any_node: RunningNode,
    tenant: TenantFactory,
) -> None:
    node, http = any_node, any_node.session
    t = await tenant()
    handle = t.handle("one-shot")
    r = await write(http, node, handle, None)
    assert_auth_refused(r)
    found = {scheme.lower(): params for scheme, params in hc.challenges(r.headers)}
    assert found.get("basic", {}).get("realm") == "handle", found
    challenge = hc.parse_www_authenticate(r.headers)
    assert challenge.get("sessionId") and challenge.get("nonce"), challenge
    await assert_absent(http, node, handle)

    s = hc.HandleSession(http, node.url)
    s.adopt(challenge["sessionId"], hc.unb64(challenge["nonce"]))
    answered = {"Authorization": s.seckey_authorization(t.identity, t.secret, "SHA256")}
    r = await write(http, node, handle, answered)
    assert (r.status, r.body.get("responseCode")) == (201, 1), r
    await assert_present(http, node, handle)
    # the session is now authenticated: the short header alone writes
    r = await write(http, node, t.handle("one-shot-2"), s.header())
    assert r.status == 201, r
    status, body = await s.status()
    assert status == 200 and body.get("authenticated") is True, body
    assert body.get("id") == t.identity, body


# --- the server proves itself ---------------------------------------------------------------


async def node_key(
    http: aiohttp.ClientSession, node: RunningNode, t: Tenant
) -> rsa.RSAPublicKey | dsa.DSAPublicKey:
    r = await read(http, node, f"0.NA/{t.prefix}", None, f"index={NODE_KEY_INDEX}")
    assert r.status == 200, r
    [value] = [v for v in r.body["values"] if v["index"] == NODE_KEY_INDEX]
    assert value["type"] == "HS_PUBKEY" and value["data"]["format"] == "base64", value
    return hc.decode_handle_key(hc.unb64(value["data"]["value"]))


async def test_server_signature(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    t = await tenant()
    key = await node_key(http, node, t)
    assert isinstance(key, rsa.RSAPublicKey), key
    assert (await node_key(http, node, await tenant())).public_numbers() == key.public_numbers()

    # on a new session
    cnonce = hc.new_cnonce()
    asking = {"Authorization": hc.format_authorization(version="0", cnonce=hc.b64(cnonce))}
    r = await call(http, "POST", f"{node.url}/api/sessions", asking)
    assert r.status == 201, r
    nonce = hc.unb64(r.body["nonce"])
    alg, signature = r.body["serverAlg"], hc.unb64(r.body["serverSignature"])
    assert hc.verify_server_signature(key, nonce, cnonce, alg, signature)
    header = hc.parse_www_authenticate(r.headers)
    assert header["sessionId"] == r.body["sessionId"], header
    assert hc.unb64(header["nonce"]) == nonce, header
    assert header["serverAlg"] == alg, header
    assert hc.verify_server_signature(key, nonce, cnonce, alg, hc.unb64(header["serverSignature"]))
    # it is a signature over this nonce and this cnonce, nothing else
    assert not hc.verify_server_signature(key, os.urandom(len(nonce)), cnonce, alg, signature)
    assert not hc.verify_server_signature(key, nonce, hc.new_cnonce(), alg, signature)

    # on an existing session
    s = await new_session(http, node)
    assert s.session_id and s.nonce
    cnonce2 = hc.new_cnonce()
    asking = {
        "Authorization": hc.format_authorization(
            version="0", sessionId=s.session_id, cnonce=hc.b64(cnonce2)
        )
    }
    r = await call(http, "PUT", s.url, asking)
    assert r.status == 200, r
    assert r.body.get("authenticated") is False, r
    alg2, signature2 = r.body["serverAlg"], hc.unb64(r.body["serverSignature"])
    assert hc.verify_server_signature(key, s.nonce, cnonce2, alg2, signature2)
    assert not hc.verify_server_signature(key, nonce, cnonce2, alg2, signature2)
    header = hc.parse_www_authenticate(r.headers)
    assert hc.unb64(header["serverSignature"]) == signature2 or hc.verify_server_signature(
        key, s.nonce, cnonce2, header["serverAlg"], hc.unb64(header["serverSignature"])
    )


@pytest.mark.parametrize("index", [NODE_KEY_INDEX, 0])
async def test_server_signature_is_no_login(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, index: int
) -> None:
    """The node signs nonce ‖ cnonce for anyone who asks, which is exactly what an HS_PUBKEY
    answer is: its key at 301 of every prefix record must not let that signature authenticate
    (as ``301:0.NA/<prefix>`` or ``0:0.NA/<prefix>``), or anyone could log in with it."""
    t = await tenant()
    identity = f"{index}:0.NA/{t.prefix}"
    s = await new_session(http, node)
    assert s.session_id and s.nonce
    cnonce = hc.new_cnonce()
    asking = hc.format_authorization(version="0", sessionId=s.session_id, cnonce=hc.b64(cnonce))
    r = await call(http, "PUT", s.url, authorization(asking))
    assert r.status == 200 and "serverSignature" in r.body, r
    replayed = hc.format_authorization(
        version="0",
        sessionId=s.session_id,
        id=identity,
        type="HS_PUBKEY",
        cnonce=hc.b64(cnonce),
        alg=r.body["serverAlg"],
        signature=r.body["serverSignature"],
    )
    assert_session_refused(*await s.send_authorization(replayed))
    await assert_unauthenticated(s)
    # nor on a one-shot write, with a signature obtained on the challenge's own session
    r = await write(http, node, t.handle("oracle"), None)
    challenge = hc.parse_www_authenticate(r.headers)
    asking = hc.format_authorization(
        version="0", sessionId=challenge["sessionId"], cnonce=hc.b64(cnonce)
    )
    r = await call(http, "PUT", s.url, authorization(asking))
    assert r.status == 200 and "serverSignature" in r.body, r
    replayed = hc.format_authorization(
        version="0",
        sessionId=challenge["sessionId"],
        id=identity,
        type="HS_PUBKEY",
        cnonce=hc.b64(cnonce),
        alg=r.body["serverAlg"],
        signature=r.body["serverSignature"],
    )
    assert_auth_refused(await write(http, node, t.handle("oracle"), authorization(replayed)))
    assert_auth_refused(
        await write(http, node, t.handle("oracle"), hc.session_header(challenge["sessionId"]))
    )
    await assert_absent(http, node, t.handle("oracle"))


# --- refused: forged, replayed, misdirected answers ----------------------------------------


async def test_forged_nonce(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    t = await tenant()
    s = await new_session(http, node)
    assert s.session_id and s.nonce
    forged = hc.HandleSession(http, node.url)
    forged.adopt(s.session_id, os.urandom(len(s.nonce)))
    assert_session_refused(*await forged.authenticate_seckey(t.identity, t.secret))
    await assert_unauthenticated(s)
    answered = {"Authorization": forged.seckey_authorization(t.identity, t.secret)}
    assert_auth_refused(await write(http, node, t.handle("forged"), answered))
    assert_auth_refused(await write(http, node, t.handle("forged"), s.header()))
    await assert_absent(http, node, t.handle("forged"))
    await assert_unauthenticated(s)


async def test_session_id_never_issued(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    t = await tenant()
    made_up = hc.HandleSession(http, node.url)
    made_up.adopt("made-up-" + os.urandom(8).hex(), os.urandom(16))
    answered = {"Authorization": made_up.seckey_authorization(t.identity, t.secret)}
    assert_auth_refused(await write(http, node, t.handle("made-up"), answered))
    status, _ = await made_up.send_authorization(answered["Authorization"])
    assert status == 401
    assert_auth_refused(await write(http, node, t.handle("made-up"), made_up.header()))
    status, _ = await made_up.status()
    assert status == 401
    await assert_absent(http, node, t.handle("made-up"))


async def test_deleted_session_is_refused(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    t = await tenant()
    s = await admin_session(http, node, t)
    full = s.last_authorization
    assert full is not None
    await s.close()
    # the session header, the recorded full answer, a fresh answer to the old nonce
    assert_auth_refused(await write(http, node, t.handle("replay"), s.header()))
    assert_auth_refused(await write(http, node, t.handle("replay"), {"Authorization": full}))
    fresh = {"Authorization": s.seckey_authorization(t.identity, t.secret)}
    assert_auth_refused(await write(http, node, t.handle("replay"), fresh))
    status, _ = await s.send_authorization(full)
    assert status == 401
    status, _ = await s.status()
    assert status == 401
    assert await s.delete() in (401, 404)
    await assert_absent(http, node, t.handle("replay"))


async def test_signature_from_another_session(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    t = await tenant()
    a = await new_session(http, node)
    b = await new_session(http, node)
    assert a.nonce and b.session_id and a.nonce != b.nonce
    cnonce = hc.new_cnonce()
    signature, _ = hc.seckey_signature("SHA256", t.secret, a.nonce, cnonce)
    on_b = hc.format_authorization(
        version="0",
        sessionId=b.session_id,
        id=t.identity,
        type="HS_SECKEY",
        cnonce=hc.b64(cnonce),
        alg="SHA256",
        signature=hc.b64(signature),
    )
    assert_session_refused(*await b.send_authorization(on_b))
    assert_auth_refused(await write(http, node, t.handle("moved"), {"Authorization": on_b}))
    assert_auth_refused(await write(http, node, t.handle("moved"), b.header()))
    await assert_absent(http, node, t.handle("moved"))
    await assert_unauthenticated(b)
    # the same answer on its own session is good: the refusal was the move
    on_a = a.seckey_authorization(t.identity, t.secret, cnonce=cnonce)
    assert_session_accepted(*await a.send_authorization(on_a), t.identity)


async def test_wrong_key_or_secret(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, keys: Keys
) -> None:
    t = await tenant()
    identity = await grant_key(http, node, t, keys.rsa)
    s = await new_session(http, node)
    assert_session_refused(*await s.authenticate_pubkey(identity, keys.rsa_other))
    one_shot = {"Authorization": s.pubkey_authorization(identity, keys.rsa_other)}
    assert_auth_refused(await write(http, node, t.handle("wrong"), one_shot))
    s2 = await new_session(http, node)
    for alg in hc.SECKEY_ALGS:
        assert_session_refused(*await s2.authenticate_seckey(t.identity, t.secret + "x", alg))
    assert_auth_refused(await write(http, node, t.handle("wrong"), s.header()))
    assert_auth_refused(await write(http, node, t.handle("wrong"), s2.header()))
    await assert_absent(http, node, t.handle("wrong"))


async def test_identity_that_does_not_exist(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, keys: Keys
) -> None:
    t = await tenant()
    for identity in (f"300:{t.handle('nobody')}", "300:0.NA/99.999.999"):
        s = await new_session(http, node)
        assert_session_refused(*await s.authenticate_seckey(identity, t.secret))
        assert_session_refused(*await s.authenticate_pubkey(identity, keys.rsa))
        answered = {"Authorization": s.seckey_authorization(identity, t.secret)}
        assert_auth_refused(await write(http, node, t.handle("ghost"), answered))
        assert_auth_refused(await write(http, node, t.handle("ghost"), s.header()))
    await assert_absent(http, node, t.handle("ghost"))


async def test_index_that_holds_no_key(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, keys: Keys
) -> None:
    t = await tenant()
    await grant_key(http, node, t, keys.rsa)
    # 100 holds the HS_ADMIN, 999 nothing
    for index in (100, 999):
        identity = f"{index}:0.NA/{t.prefix}"
        s = await new_session(http, node)
        assert_session_refused(*await s.authenticate_seckey(identity, t.secret))
        assert_session_refused(*await s.authenticate_pubkey(identity, keys.rsa))
        answered = {"Authorization": s.pubkey_authorization(identity, keys.rsa)}
        assert_auth_refused(await write(http, node, t.handle("no-key"), answered))
        assert_auth_refused(await write(http, node, t.handle("no-key"), s.header()))
    await assert_absent(http, node, t.handle("no-key"))


async def test_seckey_identity_answered_as_pubkey(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, keys: Keys
) -> None:
    t = await tenant()
    s = await new_session(http, node)
    # a real RSA signature, and the right secret answer, both labelled HS_PUBKEY
    signed = s.pubkey_authorization(t.identity, keys.rsa, "SHA256")
    assert_session_refused(*await s.send_authorization(signed))
    mislabelled = s.seckey_authorization(t.identity, t.secret, "SHA256", type_="HS_PUBKEY")
    assert_session_refused(*await s.send_authorization(mislabelled))
    for header in (signed, mislabelled):
        assert_auth_refused(
            await write(http, node, t.handle("mistyped"), {"Authorization": header})
        )
    assert_auth_refused(await write(http, node, t.handle("mistyped"), s.header()))
    await assert_absent(http, node, t.handle("mistyped"))
    await assert_unauthenticated(s)


async def test_pubkey_identity_answered_as_seckey(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, keys: Keys
) -> None:
    """The public key's bytes are public: they must not work as a secret."""
    t = await tenant()
    identity = await grant_key(http, node, t, keys.rsa)
    raw = hc.handle_key_bytes(keys.rsa.public_key())
    s = await new_session(http, node)
    headers = [s.pubkey_authorization(identity, keys.rsa, "SHA256", type_="HS_SECKEY")]
    for secret in (raw, hc.b64(raw)):
        for alg in ("SHA256", "HMAC-SHA256"):
            headers.append(s.seckey_authorization(identity, secret, alg))
    for header in headers:
        assert_session_refused(*await s.send_authorization(header))
        assert_auth_refused(
            await write(http, node, t.handle("mistyped"), {"Authorization": header})
        )
    assert_auth_refused(await write(http, node, t.handle("mistyped"), s.header()))
    await assert_absent(http, node, t.handle("mistyped"))
    await assert_unauthenticated(s)


@pytest.mark.parametrize("alg", ["MD2", "SHA3-256", "ROT13", ""])
async def test_unknown_alg(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, keys: Keys, alg: str
) -> None:
    t = await tenant()
    identity = await grant_key(http, node, t, keys.rsa)
    s = await new_session(http, node)
    assert s.session_id and s.nonce
    cnonce = hc.new_cnonce()
    # signed correctly (SHA-256), labelled with an alg the protocol does not know
    seckey_sig, _ = hc.seckey_signature("SHA256", t.secret, s.nonce, cnonce)
    pubkey_sig = hc.pubkey_signature(keys.rsa, s.nonce, cnonce, "SHA256")
    headers = [
        hc.format_authorization(
            version="0",
            sessionId=s.session_id,
            id=who,
            type=kind,
            cnonce=hc.b64(cnonce),
            alg=alg,
            signature=hc.b64(sig),
        )
        for who, kind, sig in (
            (t.identity, "HS_SECKEY", seckey_sig),
            (identity, "HS_PUBKEY", pubkey_sig),
        )
    ]
    for header in headers:
        assert_session_refused(*await s.send_authorization(header))
        assert_auth_refused(await write(http, node, t.handle("alg"), {"Authorization": header}))
    await assert_absent(http, node, t.handle("alg"))
    await assert_unauthenticated(s)


TAMPER: dict[str, Callable[[bytes], bytes]] = {
    "truncated": lambda sig: sig[: len(sig) // 2],
    "one-byte": lambda sig: sig[:1],
    "trailing-byte": lambda sig: sig + b"\x00",
    "bit-flipped": lambda sig: sig[:-1] + bytes([sig[-1] ^ 1]),
    "empty": lambda sig: b"",
}


@pytest.mark.parametrize("tamper", list(TAMPER))
@pytest.mark.parametrize("kind", ["HMAC-SHA256", "SHA256", "ecdsa", "ed25519", "rsa"])
async def test_tampered_signature(
    node: RunningNode,
    tenant: TenantFactory,
    http: aiohttp.ClientSession,
    keys: Keys,
    kind: str,
    tamper: str,
) -> None:
    """A correct answer cut short, extended, or with one bit changed is no answer (a server
    comparing only a prefix, or parsing DER leniently, would take it)."""
    t = await tenant()
    s = await new_session(http, node)
    assert s.session_id and s.nonce
    cnonce = hc.new_cnonce()
    if kind in ("HMAC-SHA256", "SHA256"):
        identity, type_, alg = t.identity, "HS_SECKEY", kind
        signature, _ = hc.seckey_signature(alg, t.secret, s.nonce, cnonce)
    else:
        key = keys.named({"ecdsa": "ec"}.get(kind, kind))
        alg = "Ed25519" if kind == "ed25519" else "SHA256"
        identity, type_ = await grant_key(http, node, t, key, "key"), "HS_PUBKEY"
        signature = hc.pubkey_signature(key, s.nonce, cnonce, alg)
    header = hc.format_authorization(
        version="0",
        sessionId=s.session_id,
        id=identity,
        type=type_,
        cnonce=hc.b64(cnonce),
        alg=alg,
        signature=hc.b64(TAMPER[tamper](signature)),
    )
    assert_auth_refused(await write(http, node, t.handle("tampered"), authorization(header)))
    assert_session_refused(*await s.send_authorization(header))
    await assert_absent(http, node, t.handle("tampered"))
    await assert_unauthenticated(s)


PBKDF2_BAD: list[Any] = [
    pytest.param({"iterations": "0"}, id="iterations-0"),
    pytest.param({"iterations": "-1"}, id="iterations-negative"),
    pytest.param({"iterations": "ten"}, id="iterations-not-a-number"),
    pytest.param({"iterations": "10000000"}, id="iterations-10M"),
    pytest.param({"length": "0"}, id="length-0"),
    pytest.param({"length": "7"}, id="length-not-bytes"),
    pytest.param({"length": "160000"}, id="length-160k-bits"),
    pytest.param({"salt": "%%%"}, id="salt-bad-base64"),
    pytest.param({"salt": None}, id="salt-missing"),
    pytest.param({"iterations": None}, id="iterations-missing"),
    pytest.param({"length": None}, id="length-missing"),
]


def _pbkdf2_answer(
    secret: str, nonce: bytes, cnonce: bytes, salt: bytes, params: Mapping[str, str | None]
) -> bytes:
    """The correct answer for the stated parameters where they make sense and are cheap to
    compute here; random bytes otherwise (the server must refuse either way)."""
    try:
        iterations, length = int(params["iterations"] or ""), int(params["length"] or "")
    except ValueError:
        return os.urandom(20)
    if 1 <= iterations <= 100_000 and 8 <= length <= 1600 and length % 8 == 0:
        return hc.seckey_pbkdf2(secret, nonce, cnonce, salt, iterations, length)
    return os.urandom(20)


@pytest.mark.parametrize("change", PBKDF2_BAD)
async def test_pbkdf2_parameters_are_checked(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession, change: dict[str, Any]
) -> None:
    """The client picks salt, iterations and length; the server must refuse nonsense and
    costly values quickly (the answer is computed honestly for the stated parameters)."""
    t = await tenant()
    s = await new_session(http, node)
    assert s.session_id and s.nonce
    cnonce, salt = hc.new_cnonce(), os.urandom(16)
    params: dict[str, str | None] = {"salt": hc.b64(salt), "iterations": "10000", "length": "160"}
    params.update(change)
    signature = _pbkdf2_answer(t.secret, s.nonce, cnonce, salt, params)
    pairs: Pairs = [
        ("version", "0"),
        ("sessionId", s.session_id),
        ("id", t.identity),
        ("type", "HS_SECKEY"),
        ("cnonce", hc.b64(cnonce)),
        ("alg", "PBKDF2-HMAC-SHA1"),
        ("signature", hc.b64(signature)),
        *((k, v) for k, v in params.items() if v is not None),
    ]
    header = authorization(hc.format_pairs(pairs))
    started = time.monotonic()
    r = await write(http, node, t.handle("pbkdf2"), header, timeout=10)
    assert time.monotonic() - started < 3, "the server spent seconds on client-chosen PBKDF2"
    assert_auth_refused(r)
    await assert_absent(http, node, t.handle("pbkdf2"))
    await assert_unauthenticated(s)


async def test_costly_pbkdf2_answer_does_not_stall_the_node(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    """Anyone may send a PBKDF2 answer with the largest parameters the node accepts
    (200000 iterations, 512 bits: about 0.4 s of CPU each). Checking it must not hold up the
    node's other requests (the node runs on this test's event loop: work done on the loop
    instead of in a thread delays the read below by the whole computation)."""
    t = await tenant()
    assert (await write(http, node, t.handle("reader"), t.auth)).status == 201
    s = await new_session(http, node)
    assert s.session_id and s.nonce
    pairs: Pairs = [
        ("version", "0"),
        ("sessionId", s.session_id),
        ("id", t.identity),
        ("type", "HS_SECKEY"),
        ("cnonce", hc.b64(hc.new_cnonce())),
        ("alg", "PBKDF2-HMAC-SHA1"),
        ("signature", hc.b64(os.urandom(20))),
        ("salt", hc.b64(os.urandom(16))),
        ("iterations", "200000"),
        ("length", "512"),
    ]
    header = authorization(hc.format_pairs(pairs))

    async def timed_read() -> float:
        started = time.monotonic()
        r = await read(http, node, t.handle("reader"))
        assert r.status == 200, r
        return time.monotonic() - started

    baseline = await timed_read()
    costly = [
        asyncio.create_task(write(http, node, t.handle(f"costly-{i}"), header)) for i in range(3)
    ]
    await asyncio.sleep(0.05)
    during = await timed_read()
    for reply in await asyncio.gather(*costly):
        assert_auth_refused(reply)
    assert during < baseline + 0.25, f"a read took {during:.2f} s behind PBKDF2 answers"
    await assert_absent(http, node, t.handle("costly-0"))


async def test_reauthentication_replaces_the_identity(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    """A session answered as A and then as B acts as B only (never as both)."""
    a = await tenant()
    b = await tenant()
    s = await admin_session(http, node, a)
    status, body = await s.authenticate_seckey(b.identity, b.secret)
    if status == 200:
        assert body.get("authenticated") is True and body.get("id") == b.identity, body
        assert_forbidden(await write(http, node, a.handle("as-b"), s.header()))
        await assert_absent(http, node, a.handle("as-b"))
        assert (await write(http, node, b.handle("as-b"), s.header())).status == 201
    else:  # refusing to switch is fine too, as long as the session stays A
        assert status in (401, 403, 409), body
        _, body = await s.status()
        assert body.get("id") == a.identity, body
        assert_forbidden(await write(http, node, b.handle("as-a"), s.header()))
        await assert_absent(http, node, b.handle("as-a"))
    # a failed answer afterwards does not leave the session with more than it had
    status, body = await s.authenticate_seckey(a.identity, "wrong")
    assert status == 401, body
    r = await write(http, node, a.handle("after-failure"), s.header())
    assert r.status in (401, 403), r
    await assert_absent(http, node, a.handle("after-failure"))


# --- refused: malformed headers -------------------------------------------------------------

Pairs = list[tuple[str, str]]


def _without(name: str) -> Callable[[Pairs, str], str]:
    return lambda pairs, _other: hc.format_pairs([p for p in pairs if p[0] != name])


def _replace(name: str, value: str) -> Callable[[Pairs, str], str]:
    return lambda pairs, _other: hc.format_pairs([(k, value if k == name else v) for k, v in pairs])


def _twice(name: str, real_first: bool, other: Callable[[str], str]) -> Callable[[Pairs, str], str]:
    """``name`` twice, the real value first or last, the other value from ``other``."""

    def build(pairs: Pairs, other_identity: str) -> str:
        out: Pairs = []
        for k, v in pairs:
            if k == name:
                dup = (k, other(other_identity))
                out.extend([(k, v), dup] if real_first else [dup, (k, v)])
            else:
                out.append((k, v))
        return hc.format_pairs(out)

    return build


def _random_b64(size: int) -> Callable[[str], str]:
    return lambda _other: hc.b64(os.urandom(size))


MALFORMED: list[Any] = [
    *(pytest.param(_without(n), id=f"missing-{n}") for n in ("id", "type", "cnonce", "alg")),
    pytest.param(_without("signature"), id="missing-signature"),
    pytest.param(_twice("id", True, lambda other: other), id="two-ids-real-first"),
    pytest.param(_twice("id", False, lambda other: other), id="two-ids-real-last"),
    pytest.param(_twice("signature", True, _random_b64(32)), id="two-signatures-real-first"),
    pytest.param(_twice("signature", False, _random_b64(32)), id="two-signatures-real-last"),
    pytest.param(
        _twice("sessionId", False, lambda _o: "other-" + os.urandom(8).hex()),
        id="two-session-ids",
    ),
    pytest.param(_replace("signature", "!!not*base64!!"), id="bad-base64-signature"),
    pytest.param(_replace("cnonce", "%%%%"), id="bad-base64-cnonce"),
    pytest.param(_replace("signature", hc.b64(os.urandom(4500))), id="signature-6kB"),
    pytest.param(_replace("signature", hc.b64(os.urandom(15000))), id="signature-20kB"),
    pytest.param(_replace("version", "1"), id="version-1"),
    pytest.param(_replace("type", "HS_FOO"), id="unknown-type"),
    pytest.param(lambda pairs, _o: "Handle garbage", id="garbage-after-Handle"),
    pytest.param(lambda pairs, _o: hc.format_pairs(pairs) + " trailing junk", id="trailing-junk"),
    pytest.param(lambda pairs, _o: hc.format_pairs(pairs)[:-1], id="unterminated-quote"),
    pytest.param(
        lambda pairs, _o: "Handle " + " ".join(f"{k}={hc.quote(v)}" for k, v in pairs),
        id="no-commas",
    ),
    pytest.param(lambda pairs, _o: "Handle", id="scheme-only"),
    pytest.param(lambda pairs, _o: "Handle " + hc.b64(os.urandom(48)), id="token68"),
]


def answer_pairs(s: hc.HandleSession, t: Tenant) -> Pairs:
    """A correct HS_SECKEY answer on session ``s`` as (name, value) pairs."""
    assert s.session_id and s.nonce
    cnonce = hc.new_cnonce()
    signature, _ = hc.seckey_signature("SHA256", t.secret, s.nonce, cnonce)
    return [
        ("version", "0"),
        ("sessionId", s.session_id),
        ("id", t.identity),
        ("type", "HS_SECKEY"),
        ("cnonce", hc.b64(cnonce)),
        ("alg", "SHA256"),
        ("signature", hc.b64(signature)),
    ]


@pytest.mark.parametrize("build", MALFORMED)
async def test_malformed_header(
    node: RunningNode,
    tenant: TenantFactory,
    http: aiohttp.ClientSession,
    build: Callable[[Pairs, str], str],
    request: pytest.FixtureRequest,
) -> None:
    t = await tenant()
    other = await tenant()
    s = await new_session(http, node)
    header = authorization(build(answer_pairs(s, t), other.identity))
    oversized = request.node.callspec.id == "signature-20kB"
    # the one-shot write
    r = await write(http, node, t.handle("malformed"), header)
    if oversized:  # the HTTP layer may refuse a 20 kB header itself
        assert r.status in (400, 401, 431), r
    else:
        assert_auth_refused(r)
    # on the session resource
    r = await call(http, "PUT", s.url, header)
    if oversized:
        assert r.status in (400, 401, 431), r
    else:
        assert r.status == 401, r
        assert r.body.get("authenticated", False) is False, r
    await assert_absent(http, node, t.handle("malformed"))
    await assert_unauthenticated(s)
    assert_auth_refused(await write(http, node, t.handle("malformed"), s.header()))
    await assert_absent(http, node, t.handle("malformed"))


def _token_or_quoted(value: str) -> str:
    return value if re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", value) else hc.quote(value)


WELL_FORMED: list[Any] = [
    pytest.param(lambda pairs: hc.format_pairs(pairs), id="as-the-client-writes-it"),
    pytest.param(lambda pairs: hc.format_pairs(pairs, scheme="handle"), id="scheme-lowercase"),
    pytest.param(lambda pairs: hc.format_pairs(pairs, scheme="HANDLE"), id="scheme-uppercase"),
    pytest.param(
        lambda pairs: "Handle  " + " ,".join(f"{k} = {hc.quote(v)}" for k, v in pairs),
        id="optional-whitespace",
    ),
    pytest.param(
        lambda pairs: "Handle " + ", ".join(f"{k}={_token_or_quoted(v)}" for k, v in pairs),
        id="token-values-unquoted",
    ),
    pytest.param(
        lambda pairs: (
            "Handle "
            + ", ".join(
                f'{k}="{v.replace(":", chr(92) + ":")}"' if k == "id" else f"{k}={hc.quote(v)}"
                for k, v in pairs
            )
        ),
        id="quoted-pair-in-id",
    ),
    pytest.param(
        lambda pairs: hc.format_pairs([(k.upper(), v) for k, v in pairs]),
        id="param-names-uppercase",
    ),
]


@pytest.mark.parametrize("build", WELL_FORMED)
async def test_well_formed_header_variants(
    node: RunningNode,
    tenant: TenantFactory,
    http: aiohttp.ClientSession,
    build: Callable[[Pairs], str],
) -> None:
    """RFC 7235 syntax the server must read like the canonical form (scheme and parameter
    names are case-insensitive, optional whitespace, token or quoted-string values), on the
    session resource and on a one-shot write; also the control for test_malformed_header."""
    t = await tenant()
    s = await new_session(http, node)
    assert_session_accepted(*await s.send_authorization(build(answer_pairs(s, t))), t.identity)
    s2 = await new_session(http, node)
    r = await write(http, node, t.handle("well-formed"), authorization(build(answer_pairs(s2, t))))
    assert (r.status, r.body.get("responseCode")) == (201, 1), r
    await assert_present(http, node, t.handle("well-formed"))


# --- authorisation across tenants and non-public values ------------------------------------


async def test_session_of_one_tenant_cannot_write_another(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    a = await tenant()
    b = await tenant()
    assert (await write(http, node, b.handle("keep"), b.auth)).status == 201
    before = await read(http, node, b.handle("keep"), b.auth)
    s = await admin_session(http, node, a)
    assert_forbidden(await write(http, node, b.handle("new"), s.header()))
    await assert_absent(http, node, b.handle("new"))
    changed = [{**URL_VALUE, "data": "https://example.com/taken"}]
    assert_forbidden(await write(http, node, b.handle("keep"), s.header(), changed))
    assert_forbidden(await call(http, "DELETE", api(node, b.handle("keep")), s.header()))
    after = await read(http, node, b.handle("keep"), b.auth)
    assert (after.status, after.body) == (before.status, before.body)
    # its own prefix is fine
    assert (await write(http, node, a.handle("mine"), s.header())).status == 201


async def test_non_public_values_follow_the_session_identity(
    node: RunningNode, tenant: TenantFactory, http: aiohttp.ClientSession
) -> None:
    t = await tenant()
    other = await tenant()
    handle = t.handle("priv")
    r = await write(http, node, handle, t.auth, [URL_VALUE, PRIVATE])
    assert r.status == 201, r

    async def hidden_from_anonymous() -> None:
        for query in ("", "index=3", "type=NOTE"):
            r = await read(http, node, handle, None, query)
            assert r.status == 200, r
            assert PRIVATE_TEXT not in str(r.body), (query, r)
        assert_auth_refused(await read(http, node, handle, None, "publicOnly=false"))

    await hidden_from_anonymous()
    theirs = await admin_session(http, node, other)
    r = await read(http, node, handle, theirs.header())
    assert r.status == 200 and PRIVATE_TEXT not in str(r.body), r
    assert_forbidden(await read(http, node, handle, theirs.header(), "publicOnly=false"))
    mine = await admin_session(http, node, t)
    for query in ("", "publicOnly=false", "index=3"):
        r = await read(http, node, handle, mine.header(), query)
        assert r.status == 200, (query, r)
        shown = {v["index"]: v for v in r.body["values"]}
        assert shown[3]["data"]["value"] == PRIVATE_TEXT, (query, r)
        assert shown[3]["permissions"] == "1100", (query, r)
    # what the owner read is not served to anyone else afterwards
    await hidden_from_anonymous()
    r = await read(http, node, handle, theirs.header())
    assert r.status == 200 and PRIVATE_TEXT not in str(r.body), r
    # nor to the owner's session once it has ended
    await mine.close()
    r = await read(http, node, handle, mine.header(), "publicOnly=false")
    assert r.status == 401, r
