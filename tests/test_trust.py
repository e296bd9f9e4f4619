"""Transport security, rate limits, authentication back-off, session expiry, keys at rest and
security log lines, end to end over real sockets from the client's side.

TLS tests run ``idnode serve`` in its own process with a self-signed certificate for
127.0.0.1 made here; the client trusts exactly that certificate. Limits, back-off, session
expiry and log lines run against the node's application in-process (a real loopback
socket) so that its metrics and log records can be inspected.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import re
import secrets
import select
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import handle_client as hc
import pytest

from tests.conftest import (
    URL_VALUE,
    RunningNode,
    Tenant,
    TenantFactory,
    free_port,
    make_certificate,
    run_idnode,
    running,
    served,
)

URL_TEXT = "https://example.com/1"  # URL_VALUE's data
_numbers = itertools.count(1)


def new_prefix() -> str:
    """A prefix of this module's own range (conftest's counter lives in another copy of
    conftest when imported as ``tests.conftest``, so its numbers could repeat)."""
    return f"88.160.{next(_numbers)}"


# --- helpers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str]
    text: str


async def call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
) -> Reply:
    async with http.request(method, url, headers=headers, json=json_body) as r:
        text = await r.text()
        body: dict[str, Any] = {}
        if text and r.content_type == "application/json":
            parsed = json.loads(text)
            body = parsed if isinstance(parsed, dict) else {"_json": parsed}
        return Reply(r.status, body, r.headers, text)


async def put(
    http: aiohttp.ClientSession, base: str, handle: str, headers: Mapping[str, str] | None
) -> Reply:
    return await call(http, "PUT", f"{base}/api/handles/{handle}", headers, {"values": [URL_VALUE]})


async def get(
    http: aiohttp.ClientSession, base: str, handle: str, headers: Mapping[str, str] | None = None
) -> Reply:
    return await call(http, "GET", f"{base}/api/handles/{handle}", headers)


def basic(identity: str, secret: str) -> dict[str, str]:
    raw = f"{quote(identity, safe='')}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def assert_https_required(r: Reply) -> None:
    """403, responseCode 401, and a message that says HTTPS is needed."""
    assert r.status == 403, r
    assert r.body.get("responseCode") == 401, r
    assert "HTTPS" in str(r.body.get("message", "")), r


def assert_rate_limited(r: Reply) -> None:
    """429 with a Retry-After of at least one whole second and responseCode 3."""
    assert r.status == 429, r
    retry = r.headers.get("Retry-After")
    assert retry is not None and retry.isdigit() and int(retry) >= 1, r
    assert r.body.get("responseCode") == 3, r


async def assert_absent(http: aiohttp.ClientSession, base: str, handle: str) -> None:
    r = await get(http, base, handle)
    assert (r.status, r.body.get("responseCode")) == (404, 100), ("written!", r)


def rejections(node: RunningNode, reason: str) -> float:
    value = node.metrics.registry.get_sample_value(
        "idnode_security_rejections_total", {"reason": reason}
    )
    return value or 0.0


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def read_output_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float) -> str:
    """What the running process has printed, read until ``marker`` shows or ``timeout``.

    Reads the pipe's file descriptor directly (no buffering), so ``served()`` still
    collects the rest when it stops the process."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- a node serving HTTPS -------------------------------------------------------------------


@dataclass(frozen=True)
class TlsNode:
    http: str
    https: str
    data_dir: Path
    ca: ssl.SSLContext
    admin: Tenant


@pytest.fixture(scope="module")
def tls_node(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNode]:
    """``idnode serve`` with IDNODE_TLS_CERT/KEY; its own keys under DATA_DIR/keys and a
    prefix homed at start-up (IDNODE_BOOTSTRAP_PREFIX/SECRET) with those keys."""
    certs = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(certs)
    data_dir = tmp_path_factory.mktemp("tls-data")
    admin = Tenant(new_prefix(), f"tls-secret-{secrets.token_hex(8)}")
    tls_port = free_port()
    ca = ssl.create_default_context(cafile=str(cert))
    with served(
        db_url,
        data_dir,
        IDNODE_TLS_CERT=str(cert),
        IDNODE_TLS_KEY=str(key),
        IDNODE_TLS_PORT=str(tls_port),
        IDNODE_BOOTSTRAP_PREFIX=admin.prefix,
        IDNODE_BOOTSTRAP_SECRET=admin.secret,
    ) as (url, _):
        wait_for_port(tls_port)
        yield TlsNode(url, f"https://127.0.0.1:{tls_port}", data_dir, ca, admin)


@pytest.fixture
async def tls_http(tls_node: TlsNode) -> AsyncIterator[aiohttp.ClientSession]:
    """A cookie-less client that trusts only the test certificate for https:// URLs."""
    connector = aiohttp.TCPConnector(ssl=tls_node.ca)
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


# --- 1. TLS ---------------------------------------------------------------------------------


async def test_writes_need_https(tls_node: TlsNode, tls_http: aiohttp.ClientSession) -> None:
    t = tls_node.admin
    h = t.handle("tls-write")
    refused = await put(tls_http, tls_node.http, h, t.auth)
    assert_https_required(refused)
    await assert_absent(tls_http, tls_node.https, h)
    # the same write over HTTPS creates the record: the refused one wrote nothing
    accepted = await put(tls_http, tls_node.https, h, t.auth)
    assert (accepted.status, accepted.body.get("responseCode")) == (201, 1), accepted
    r = await get(tls_http, tls_node.https, h)
    assert r.status == 200 and URL_TEXT in r.text, r


async def test_sessions_need_https(tls_node: TlsNode, tls_http: aiohttp.ClientSession) -> None:
    t = tls_node.admin
    plain = await call(tls_http, "POST", f"{tls_node.http}/api/sessions")
    assert_https_required(plain)
    assert "sessionId" not in plain.body, plain

    s = hc.HandleSession(tls_http, tls_node.https)
    started = await s.start()  # 201 over HTTPS, or ProtocolError
    assert s.session_id and s.nonce, started
    status, body = await s.authenticate_seckey(t.identity, t.secret, "SHA256")
    assert status == 200, body
    assert body.get("authenticated") is True and body.get("id") == t.identity, body

    # the authenticated session header is a credential: refused over plain HTTP
    h_plain = t.handle("tls-session-plain")
    assert_https_required(await put(tls_http, tls_node.http, h_plain, s.header()))
    await assert_absent(tls_http, tls_node.https, h_plain)

    h = t.handle("tls-session")
    written = await put(tls_http, tls_node.https, h, s.header())
    assert (written.status, written.body.get("responseCode")) == (201, 1), written


async def test_anonymous_reads_stay_open_over_http(
    tls_node: TlsNode, tls_http: aiohttp.ClientSession
) -> None:
    r = await get(tls_http, tls_node.http, f"0.NA/{tls_node.admin.prefix}")
    assert (r.status, r.body.get("responseCode")) == (200, 1), r
    assert r.body.get("handle") == f"0.NA/{tls_node.admin.prefix}", r


async def test_credentials_on_a_read_over_http_are_refused(
    tls_node: TlsNode, tls_http: aiohttp.ClientSession
) -> None:
    t = tls_node.admin
    prefix_record = f"0.NA/{t.prefix}"
    assert_https_required(await get(tls_http, tls_node.http, prefix_record, t.auth))
    over_tls = await get(tls_http, tls_node.https, prefix_record, t.auth)
    assert (over_tls.status, over_tls.body.get("responseCode")) == (200, 1), over_tls


def test_dev_mode_accepts_loopback_http(
    db_url: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, key_dir: Path
) -> None:
    cert, key = make_certificate(tmp_path_factory.mktemp("tls-dev"))
    admin = Tenant(new_prefix(), f"dev-secret-{secrets.token_hex(8)}")
    with served(
        db_url,
        tmp_path,
        IDNODE_TLS_CERT=str(cert),
        IDNODE_TLS_KEY=str(key),
        IDNODE_TLS_PORT=str(free_port()),
        IDNODE_DEV_MODE="true",
        IDNODE_BOOTSTRAP_PREFIX=admin.prefix,
        IDNODE_BOOTSTRAP_SECRET=admin.secret,
        IDNODE_NODE_KEY=str(key_dir / "node.pem"),
        IDNODE_SEALING_KEY=str(key_dir / "sealing.key"),
    ) as (url, proc):
        output = read_output_until(proc, b"DEVELOPMENT MODE", timeout=5)
        assert "DEVELOPMENT MODE" in output, output
        h = admin.handle("dev-write")
        body = json.dumps({"values": [URL_VALUE]}).encode()
        written = http_request(url, "PUT", f"/api/handles/{h}", admin.auth, body)
        assert written[0] == 201, written
        read = http_request(url, "GET", f"/api/handles/{h}")
        assert read[0] == 200 and URL_TEXT in read[2], read


def test_bad_certificate_stops_start_up(db_url: str, tmp_path: Path, key_dir: Path) -> None:
    _, key = make_certificate(tmp_path)
    not_a_cert = tmp_path / "not-a-cert.pem"
    not_a_cert.write_text("this is not a certificate\n")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("IDNODE_")},
        "DATABASE_URL": db_url,
        "IDNODE_DATA_DIR": str(tmp_path / "data"),
        "IDNODE_PORT": str(free_port()),
        "IDNODE_WORKERS": "1",
        "IDNODE_TLS_CERT": str(not_a_cert),
        "IDNODE_TLS_KEY": str(key),
        "IDNODE_TLS_PORT": str(free_port()),
        "IDNODE_NODE_KEY": str(key_dir / "node.pem"),
        "IDNODE_SEALING_KEY": str(key_dir / "sealing.key"),
    }
    result = run_idnode("serve", env=env)
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "IDNODE_TLS_CERT" in lines[0], result.stderr


# --- 2. rate limits -------------------------------------------------------------------------


LIMITED = {
    "read_rate": 5,
    "read_burst": 5,
    "write_rate": 2,
    "write_burst": 2,
    "auth_backoff_max": 60,
}


async def test_read_rate_limit(
    db_url: str, tmp_path: Path, key_dir: Path, tenant: TenantFactory
) -> None:
    t = await tenant()
    async with running(db_url, tmp_path, key_dir, **LIMITED) as node:
        record = f"0.NA/{t.prefix}"
        answers = [await get(node.session, node.url, record) for _ in range(6)]
        assert [a.status for a in answers[:5]] == [200] * 5, answers
        assert_rate_limited(answers[5])
        assert rejections(node, "rate_limited") == 1


async def test_write_rate_limit(
    db_url: str, tmp_path: Path, key_dir: Path, tenant: TenantFactory
) -> None:
    t = await tenant()
    async with running(db_url, tmp_path, key_dir, **LIMITED) as node:
        assert rejections(node, "rate_limited") == 0
        first = await put(node.session, node.url, t.handle("w1"), t.auth)
        second = await put(node.session, node.url, t.handle("w2"), t.auth)
        third = await put(node.session, node.url, t.handle("w3"), t.auth)
        assert (first.status, second.status) == (201, 201), (first, second)
        assert_rate_limited(third)
        assert rejections(node, "rate_limited") == 1
        await assert_absent(node.session, node.url, t.handle("w3"))


def http_request(
    base: str,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
) -> tuple[int, dict[str, str], str]:
    """One request on a fresh connection: (status, headers lower-cased, body text)."""
    host_port = base.removeprefix("http://")
    host, _, port = host_port.partition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        if body:
            extra += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        head = f"{method} {path} HTTP/1.1\r\nHost: {host_port}\r\n{extra}Connection: close\r\n\r\n"
        sock.sendall(head.encode() + body)
        return read_response(sock, method)


def read_response(sock: socket.socket, method: str = "GET") -> tuple[int, dict[str, str], str]:
    """Read exactly one HTTP/1.1 response (Content-Length framed) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed mid-head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed mid-body")
        rest += chunk
    assert len(rest) == length, "more bytes than one response"
    return status, headers, rest.decode()


def test_fast_path_read_rate_limit(db_url: str, tmp_path: Path, key_dir: Path) -> None:
    prefix = new_prefix()
    with served(
        db_url,
        tmp_path,
        IDNODE_READ_RATE="3",
        IDNODE_READ_BURST="3",
        IDNODE_BOOTSTRAP_PREFIX=prefix,
        IDNODE_BOOTSTRAP_SECRET=f"fast-secret-{secrets.token_hex(8)}",
        IDNODE_NODE_KEY=str(key_dir / "node.pem"),
        IDNODE_SEALING_KEY=str(key_dir / "sealing.key"),
    ) as (url, _):
        host_port = url.removeprefix("http://")
        request = f"GET /api/handles/0.NA/{prefix} HTTP/1.1\r\nHost: {host_port}\r\n\r\n"
        answers = []
        with socket.create_connection(("127.0.0.1", int(host_port.split(":")[1])), 10) as sock:
            for _ in range(4):
                sock.sendall(request.encode())
                answers.append(read_response(sock))
        assert [a[0] for a in answers[:3]] == [200, 200, 200], answers
        status, headers, text = answers[3]
        assert status == 429, answers[3]
        assert headers.get("retry-after", "").isdigit(), headers
        assert int(headers["retry-after"]) >= 1, headers
        assert json.loads(text).get("responseCode") == 3, text
        # the three answered reads went through the fast path itself
        _, _, metrics = http_request(url, "GET", "/metrics")
        fast = re.search(
            r'^idnode_http_requests_total\{code="200",endpoint="resolve",frontend="http-fast"\}'
            r" (\S+)$",
            metrics,
            re.MULTILINE,
        )
        assert fast is not None and float(fast.group(1)) >= 3, metrics


# --- 3. authentication back-off -------------------------------------------------------------


async def test_authentication_backoff(
    db_url: str, tmp_path: Path, key_dir: Path, tenant: TenantFactory
) -> None:
    t, other = await tenant(), await tenant()
    async with running(db_url, tmp_path, key_dir, auth_backoff_max=60) as node:
        http = node.session
        # before any failure: a session authenticated by challenge-response, and the other
        # tenant's secret verified once (so its later check is quick)
        s = hc.HandleSession(http, node.url)
        await s.start()
        status, body = await s.authenticate_seckey(t.identity, t.secret)
        assert status == 200 and body.get("authenticated") is True, body
        warm = await put(http, node.url, other.handle("warm"), other.auth)
        assert warm.status == 201, warm

        wrong = basic(t.identity, "not-the-secret")
        for attempt in ("bad-1", "bad-2"):
            r = await put(http, node.url, t.handle(attempt), wrong)
            assert r.status == 401, r

        backing_off = await put(http, node.url, t.handle("right-too-soon"), t.auth)
        assert_rate_limited(backing_off)
        unaffected = await put(http, node.url, other.handle("unaffected"), other.auth)
        assert unaffected.status == 201, unaffected
        on_session = await put(http, node.url, t.handle("on-session"), s.header())
        assert on_session.status == 201, on_session
        still = await put(http, node.url, t.handle("right-still-too-soon"), t.auth)
        assert_rate_limited(still)

        for never in ("bad-1", "bad-2", "right-too-soon", "right-still-too-soon"):
            await assert_absent(http, node.url, t.handle(never))


# --- 4. sessions expire ---------------------------------------------------------------------


async def test_idle_session_expires(
    db_url: str, tmp_path: Path, key_dir: Path, tenant: TenantFactory
) -> None:
    t = await tenant()
    async with running(db_url, tmp_path, key_dir, session_idle_seconds=1) as node:
        http = node.session
        s = hc.HandleSession(http, node.url)
        await s.start()
        status, body = await s.authenticate_seckey(t.identity, t.secret)
        assert status == 200 and body.get("authenticated") is True, body
        fresh = await put(http, node.url, t.handle("while-fresh"), s.header())
        assert fresh.status == 201, fresh

        await asyncio.sleep(1.2)
        late = await put(http, node.url, t.handle("after-expiry"), s.header())
        assert late.status == 401, late
        shown = await call(http, "GET", s.url, s.header())
        assert shown.status == 401, shown
        assert shown.body.get("sessionId") != s.session_id, shown
        await assert_absent(http, node.url, t.handle("after-expiry"))


# --- 5. keys and secrets at rest ------------------------------------------------------------


async def test_keys_and_secrets_at_rest(
    tls_node: TlsNode, tls_http: aiohttp.ClientSession, db_url: str
) -> None:
    keys = tls_node.data_dir / "keys"
    for name in ("node.pem", "sealing.key"):
        assert (keys / name).is_file(), sorted(os.listdir(keys)) if keys.exists() else keys
        assert mode(keys / name) == 0o600, oct(mode(keys / name))

    t = tls_node.admin
    r = await get(tls_http, tls_node.https, f"0.NA/{t.prefix}?publicOnly=false", t.auth)
    assert r.status == 200, r
    seckeys = [v for v in r.body.get("values", []) if v.get("type") == "HS_SECKEY"]
    assert seckeys, r
    for v in seckeys:
        stored = v["data"]["value"]
        assert isinstance(stored, str) and stored.startswith("pbkdf2-sha256$"), v
    assert t.secret not in r.text, r

    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch('SELECT handle, "values"::text AS v FROM handles')
        dump = {
            table: [str(x[0]) for x in await conn.fetch(f"SELECT t::text FROM {table} t")]
            for table in ("prefixes", "audit_log", "sessions")
        }
    finally:
        await conn.close()
    record = [row["v"] for row in rows if row["handle"] == f"0.NA/{t.prefix}"]
    assert record and "pbkdf2-sha256$" in record[0], record
    assert not [row["handle"] for row in rows if t.secret in row["v"]]
    leaked = {table: [x for x in texts if t.secret in x] for table, texts in dump.items()}
    assert leaked == {table: [] for table in dump}, leaked


# --- 6. security log lines ------------------------------------------------------------------


async def test_security_log_line_without_secret(
    node: RunningNode, tenant: TenantFactory, caplog: pytest.LogCaptureFixture
) -> None:
    t = await tenant()
    wrong_secret = f"wrong-{secrets.token_hex(8)}"
    caplog.set_level(logging.WARNING, logger="idnode.security")
    r = await put(node.session, node.url, t.handle("logged"), basic(t.identity, wrong_secret))
    assert r.status == 401, r
    records = [
        rec
        for rec in caplog.records
        if rec.name == "idnode.security" and getattr(rec, "event", None) == "authentication_failed"
    ]
    assert len(records) == 1, [(rec.name, rec.getMessage()) for rec in caplog.records]
    rec = records[0]
    assert rec.levelno == logging.WARNING, rec
    assert getattr(rec, "client", None) == "127.0.0.1", vars(rec)
    everything = rec.getMessage() + " " + " ".join(str(v) for v in vars(rec).values())
    for secret in (wrong_secret, t.secret):
        assert secret not in everything, vars(rec)
        assert secret not in caplog.text, caplog.text
