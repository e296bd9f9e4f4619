"""Shared fixtures: a real PostgreSQL, a real node on a real socket, real clients.

The database is the embedded PostgreSQL (started once per test session in a
temporary directory) unless ``IDNODE_TEST_DATABASE_URL`` names a server; each
session gets a freshly created database. Tests isolate themselves by homing
their own prefixes through the ``tenant`` factory instead of truncating tables.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import ipaddress
import itertools
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from registry import migrate
from registry.keys import AuditKey, NodeKey, Sealer
from registry.registry import Registry
from registry.store import Store, create_pool
from resolver.api import NODE
from resolver.app import create_app, node_registry, tls_context
from resolver.config import Config
from resolver.database import start_embedded
from resolver.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
TenantFactory = Callable[..., Awaitable["Tenant"]]
URL_VALUE = {
    "index": 1,
    "type": "URL",
    "data": {"format": "string", "value": "https://example.com/1"},
}
EMAIL_VALUE = {"index": 2, "type": "EMAIL", "data": "ops@example.com"}
TEST_DB = "idnode_test"


def data_template(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    """A data template (JSON Schema 2020-12) of these properties, the named ones required."""
    template: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
    }
    if required:
        template["required"] = list(required)
    return template


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A PostgreSQL server: the one named by IDNODE_TEST_DATABASE_URL, or an embedded one."""
    given = os.environ.get("IDNODE_TEST_DATABASE_URL")
    if given:
        yield given
        return
    workdir = Path(tempfile.mkdtemp(prefix="idnode-test-", dir="/tmp"))
    yield start_embedded(workdir / "pg")


async def _recreate(server: str) -> str:
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {TEST_DB}")
    finally:
        await conn.close()
    url = _with_database(server, TEST_DB)
    conn = await asyncpg.connect(url)
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()
    return url


def _with_database(url: str, database: str) -> str:
    """Swap the database of a postgresql:// URL (keeping host, socket and options)."""
    base, _, query = url.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def db_url(server_url: str) -> str:
    """A freshly created, migrated database for this test session."""
    return asyncio.run(_recreate(server_url))


@pytest.fixture
async def fresh_db(server_url: str) -> AsyncIterator[str]:
    """An empty database of its own on the test server, dropped afterwards."""
    name = f"idnode_fresh_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(server_url, name)
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    pool = await create_pool(db_url, max_size=4)
    try:
        yield Store(pool)
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The node's keys, made once for the test session (an RSA key takes a while)."""
    path = tmp_path_factory.mktemp("keys")
    NodeKey.load_or_create(path / "node.pem")
    Sealer.load_or_create(path / "sealing.key")
    AuditKey.load_or_create(path / "audit.pem")
    return path


def node_config(key_dir: Path, **settings: Any) -> Config:
    """A configuration for an in-process node using the session's keys.

    Rate limits and the authentication back-off are off unless a test sets them: the
    suite sends bursts, and wrong credentials on purpose, from loopback.
    """
    unlimited: dict[str, Any] = {"read_rate": 0.0, "write_rate": 0.0, "auth_backoff_max": 0.0}
    keys = {
        "node_key": key_dir / "node.pem",
        "sealing_key": key_dir / "sealing.key",
        "audit_key": key_dir / "audit.pem",
    }
    unlimited["handle_port"] = 0  # no Handle-protocol listener unless a test asks for one
    return Config(**{**keys, **unlimited, **settings})


@pytest.fixture
def registry(store: Store, key_dir: Path) -> Registry:
    return node_registry(node_config(key_dir), store)


_prefix_numbers = itertools.count(100)


@dataclass(frozen=True)
class Tenant:
    """A homed prefix and the credentials of its admin identity."""

    prefix: str
    secret: str

    @property
    def identity(self) -> str:
        return f"300:0.NA/{self.prefix}"

    @property
    def auth(self) -> dict[str, str]:
        """Authorization header as pyhandle sends it (identity percent-encoded)."""
        raw = f"{quote(self.identity, safe='')}:{self.secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    def handle(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"


def new_prefix() -> str:
    return f"88.118.{next(_prefix_numbers)}"


@pytest.fixture
def tenant(registry: Registry) -> Callable[..., Awaitable[Tenant]]:
    """Factory: ``await tenant()`` homes a fresh prefix and answers its admin."""

    async def make(prefix: str | None = None, secret: str | None = None) -> Tenant:
        t = Tenant(prefix or new_prefix(), secret or f"secret-{next(_prefix_numbers)}")
        assert await registry.home_prefix(t.prefix, t.secret)
        return t

    return make


@dataclass
class RunningNode:
    url: str
    metrics: Metrics
    session: aiohttp.ClientSession

    def api(self, handle: str) -> str:
        return f"{self.url}/api/handles/{handle}"


@contextlib.asynccontextmanager
async def running(
    db_url: str,
    data_dir: Path,
    key_dir: Path,
    *,
    tls: tuple[Path, Path] | None = None,
    ready: bool = True,
    **settings: Any,
) -> AsyncIterator[RunningNode]:
    """The node's application on a real loopback socket, and a cookie-less client session.

    With ``tls`` (certificate, key) it is served over HTTPS as well, TLS is configured
    (so plain HTTP refuses credentials), and the answer's URL and client are HTTPS ones
    trusting that certificate. ``ready``: wait until it listens for changes (its database
    is up) before answering.
    """
    https_port = free_port()
    if tls is not None:
        settings = {**settings, "tls_cert": tls[0], "tls_key": tls[1], "tls_port": https_port}
    config = node_config(
        key_dir, port=free_port(), data_dir=data_dir, database_url=db_url, **settings
    )
    metrics = Metrics()
    app = create_app(config, db_url, metrics=metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", config.port).start()
    url, trust = f"http://127.0.0.1:{config.port}", None
    if tls is not None:
        await web.TCPSite(runner, "127.0.0.1", https_port, ssl_context=tls_context(config)).start()
        url, trust = f"https://127.0.0.1:{https_port}", ssl.create_default_context(cafile=tls[0])
    listener = app[NODE].listener
    if ready and listener is not None:  # ready (and caching) before the first request
        await asyncio.wait_for(listener.connected.wait(), 30)
    try:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=trust if trust is not None else True),
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            yield RunningNode(url, metrics, session)
    finally:
        await runner.cleanup()


@pytest.fixture
async def node(db_url: str, tmp_path: Path, key_dir: Path) -> AsyncIterator[RunningNode]:
    """The node's application served on a real loopback socket, and a client session."""
    async with running(db_url, tmp_path, key_dir) as serving:
        yield serving


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed EC P-256 certificate for 127.0.0.1 (SAN IP): (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made once."""
    return make_certificate(tmp_path_factory.mktemp("tls"))


@contextlib.contextmanager
def served(
    db_url: str | None, data_dir: Path, **env: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``idnode serve`` in its own process, as an operator runs it: (base URL, process).

    ``db_url`` None means no ``DATABASE_URL``: the embedded server under ``data_dir``.
    At the end it is stopped with SIGTERM, which must end it cleanly (exit 0).
    """
    port = free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "IDNODE_PORT": str(port),
        "IDNODE_DATA_DIR": str(data_dir),
        "IDNODE_WORKERS": "1",
        "IDNODE_READ_RATE": "0",
        "IDNODE_WRITE_RATE": "0",
        "IDNODE_AUTH_BACKOFF_MAX": "0",
        **({"DATABASE_URL": db_url} if db_url else {}),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "resolver.cli", "serve"],
        env=full_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.communicate()[0].decode()
                pytest.fail(f"idnode serve did not start:\n{out}")
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            out = proc.communicate(timeout=20)[0].decode()
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode()
            pytest.fail(f"idnode serve did not stop on SIGTERM:\n{out}")
        assert proc.returncode == 0, out
        assert "Traceback" not in out, out


@pytest.fixture(scope="module")
def node_process(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``idnode serve`` in its own process; answers its base URL."""
    with served(db_url, tmp_path_factory.mktemp("data")) as (url, _):
        yield url


def run_idnode(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run an ``idnode`` command in its own process with exactly ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "resolver.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="session")
def cli(
    db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run an ``idnode`` command against the test database, as an operator would."""
    data_dir = tmp_path_factory.mktemp("cli-data")

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {
            **os.environ,
            "DATABASE_URL": db_url,
            "IDNODE_DATA_DIR": str(data_dir),
            **(env or {}),
        }
        return run_idnode(*args, env=full_env)

    return run


@pytest.fixture
async def loop_hygiene() -> AsyncIterator[None]:
    """Fail an async test when its event loop reports an unhandled exception."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    yield
    loop.set_exception_handler(None)
    assert not reported, f"unhandled exceptions in the event loop: {reported}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "loop_hygiene")
