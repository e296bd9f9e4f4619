"""The aiohttp application: lifecycle, the error middleware, health and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST

from registry import audit, migrate
from registry.errors import (
    AuthenticationNeeded,
    ClientError,
    ConfigError,
    InsufficientPermissions,
    InternalError,
    NotAnAdmin,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    RequestTimeout,
    ServerTooBusy,
)
from registry.keys import AuditKey, NodeKey, Sealer
from registry.registry import Clock, Registry
from registry.sessions import Sessions
from registry.store import Store, create_pool
from resolver import (
    api,
    audit_api,
    batch_api,
    browser,
    dns_front,
    handle_server,
    search_api,
    templates_api,
    trace_api,
)
from resolver.authn import IDENTITY, Authenticator, Security
from resolver.authn import add_routes as authn_routes
from resolver.cache import Cache
from resolver.config import Config
from resolver.invalidation import Listener
from resolver.limits import Limits, RateLimiter, retry_after
from resolver.logs import access_log, sampled
from resolver.metrics import Metrics
from resolver.pipeline import CacheStage, Stage, StoreStage
from resolver.sites import site_value
from resolver.upstream import Recursion, via_middleware

log = logging.getLogger("idnode")
security_log = logging.getLogger("idnode.security")
POOL_CLOSE_SECONDS = 5.0
STARTUP_WAIT_SECONDS = 10.0
"""How long start-up waits for the database before serving 503s that say why."""
STARTUP_RETRY_MAX = 10.0
"""Longest pause between attempts to reach the database at start-up."""
WRITE_METHODS = frozenset({"PUT", "POST", "DELETE", "PATCH"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(request: web.Request, exc: ClientError | InternalError) -> web.Response:
    handle = getattr(exc, "handle", None) or request.get(api.HANDLE_TEXT, "")
    status, body = api.error_document(exc, handle, write=request.method in WRITE_METHODS)
    return web.Response(body=body, status=status, content_type="application/json")


async def challenged(request: web.Request, exc: AuthenticationNeeded) -> web.Response:
    """A 401 with both challenges: Basic, and Handle with a session to answer on.

    Where credentials may not travel (plain HTTP when TLS is configured) it is a 403
    instead, as HANDLE.NET answers: no challenge invites them onto that connection.
    """
    if not request.app[api.NODE].authn.security.allows_credentials(request):
        return error_response(
            request, InsufficientPermissions(f"{exc.message}; use HTTPS to authenticate")
        )
    handle = exc.handle or request.get(api.HANDLE_TEXT, "")
    document: dict[str, object] = {
        "responseCode": exc.response_code,
        "handle": handle,
        "message": exc.message,
    }
    challenge = await request.app[api.NODE].authn.challenge(request)
    if challenge is not None:
        document.update(challenge.document())
    response = api.json_response(document, exc.status_for(write=request.method in WRITE_METHODS))
    response.headers.add("WWW-Authenticate", 'Basic realm="handle"')
    if challenge is not None:
        response.headers.add("WWW-Authenticate", challenge.header())
        challenge.set_cookie(response, secure=request.secure)
    return response


class JsonErrorsHandler(RequestHandler):
    """aiohttp's connection handler, answering malformed HTTP with the node's JSON errors.

    aiohttp answers requests it cannot parse (bad request line, header too long,
    conflicting lengths) in plain text and logs each with a traceback, so any
    client could flood the log; here they get a JSON error body and a debug log line.
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        self.logger.debug("malformed request from %s: %s", request.remote, exc)
        detail = " ".join(str(message or exc or "").split())[:200]
        error = ProtocolError(f"malformed HTTP request: {detail}" if detail else None)
        _, body = api.error_document(error, "", write=False)
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


def connection_handler(server: web.Server) -> RequestHandler:
    """A connection handler of ``server`` (as ``server()`` makes one) with JSON errors."""
    return JsonErrorsHandler(server, loop=asyncio.get_running_loop(), **server._kwargs)


def _translate_http(exc: web.HTTPException) -> ClientError:
    if exc.status == 413:
        return PayloadTooLarge(f"request body is larger than the limit ({exc.text})")
    if exc.status == 404:
        return ProtocolError("no such endpoint")
    if exc.status == 405:
        return ProtocolError("method not allowed on this endpoint")
    return ProtocolError(exc.reason)


UNLIMITED_ENDPOINTS = frozenset({"healthz", "readyz", "metrics"})


_security_lines = RateLimiter(rate=10.0, burst=50.0)
"""Security log lines per second and reason: a flood is counted in full but not logged in full."""
REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _security_event(request: web.Request, reason: str, exc: ClientError) -> None:
    """One structured line per refusal, and a count by reason; never a secret."""
    request.app[api.NODE].metrics.rejections.labels(reason).inc()
    if _security_lines.take(reason) > 0:
        return
    who = request.get(IDENTITY)
    security_log.warning(
        "refused %s",
        reason,
        extra={
            "event": reason,
            "client": request.remote,
            "identity": None if who is None else str(who),
            "method": request.method,
            "path": request.path[:200],
            "detail": exc.message[:200],
            "request_id": request.get(REQUEST_ID),
        },
    )


def _request_id(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` when it is a sane token, else a fresh one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID_RE.fullmatch(given) else secrets.token_hex(8)


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure as a JSON error body; count and time every request."""
    node = request.app[api.NODE]
    metrics = node.metrics
    started = time.perf_counter()
    endpoint = request.match_info.route.name or "other"
    request[REQUEST_ID] = request_id = _request_id(request)
    audit.CLIENT.set(request.remote)
    try:
        if not node.startup.done and endpoint not in UNLIMITED_ENDPOINTS:
            raise ServerTooBusy(f"the node is starting: {node.startup.problem}")
        if request.method in ("GET", "HEAD") and endpoint not in UNLIMITED_ENDPOINTS:
            wait = node.authn.limits.check_read(request.remote or "")
            if wait > 0:
                raise RateLimited("too many requests from this client", wait)
        response = await handler(request)
    except AuthenticationNeeded as exc:
        metrics.auth_failures.inc()
        if "Authorization" in request.headers:
            _security_event(request, "authentication_failed", exc)
        response = await challenged(request, exc)
    except RateLimited as exc:
        _security_event(request, "rate_limited", exc)
        response = error_response(request, exc)
        response.headers["Retry-After"] = retry_after(exc.retry_after)
    except ClientError as exc:
        if isinstance(exc, NotAnAdmin | InsufficientPermissions):
            _security_event(request, "denied", exc)
        elif isinstance(exc, PayloadTooLarge | RequestTimeout):
            _security_event(request, type(exc).__name__, exc)
        response = error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        translated = _translate_http(exc)
        if exc.status == 413:
            _security_event(request, "PayloadTooLarge", translated)
        response = error_response(request, translated)
        response.set_status(exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except InternalError as exc:
        log.error(
            "%s %s failed: %s",
            request.method,
            request.path,
            exc.message,
            extra={"request_id": request_id},
        )
        response = error_response(request, exc)
    except Exception:
        log.exception(
            "%s %s failed", request.method, request.path, extra={"request_id": request_id}
        )
        response = error_response(request, InternalError())
    response.headers["X-Request-Id"] = request_id
    if request.method in WRITE_METHODS and endpoint in ("write", "delete"):
        outcome = "ok" if response.status < 400 else str(response.status)
        metrics.writes.labels(endpoint, outcome).inc()
    elapsed = time.perf_counter() - started
    metrics.requests.labels("http", endpoint, str(response.status)).inc()
    metrics.request_duration.labels("http", endpoint).observe(elapsed)
    if sampled(node.config.access_log_sample):
        access_log.info(
            "%s %s %d",
            request.method,
            request.path[:200],
            response.status,
            extra={
                "request_id": request_id,
                "client": request.remote,
                "status": response.status,
                "endpoint": endpoint,
                "duration_ms": round(elapsed * 1000, 3),
            },
        )
    return response


async def healthz(request: web.Request) -> web.Response:
    return api.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    node = request.app[api.NODE]
    if not node.startup.done:
        reason = f"starting: {node.startup.problem}"
        return api.json_response({"status": "unavailable", "reason": reason}, 503)
    try:
        await node.store.ping()
        async with node.store.pool.acquire() as conn:
            missing = await migrate.pending(conn)
    except ClientError as exc:
        return api.json_response({"status": "unavailable", "reason": exc.message}, 503)
    if missing:
        names = ", ".join(f"{m.version}_{m.name}" for m in missing)
        return api.json_response({"status": "unavailable", "reason": f"pending: {names}"}, 503)
    if node.listener is not None and not node.listener.connected.is_set():
        reason = "LISTEN connection down: cache not trusted"
        return api.json_response({"status": "unavailable", "reason": reason}, 503)
    return api.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[api.NODE].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _flush_metrics(metrics: Metrics) -> None:
    while True:
        await asyncio.sleep(1.0)
        metrics.flush()


def tls_context(config: Config) -> ssl.SSLContext:
    """The server's TLS context (TLS 1.2 or later) from IDNODE_TLS_CERT and IDNODE_TLS_KEY."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert config.tls_cert is not None and config.tls_key is not None
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"IDNODE_TLS_CERT, IDNODE_TLS_KEY: cannot load them ({exc})") from None
    return context


def limits_for(config: Config) -> Limits:
    """The per-client limits ``config`` asks for, shared out across its workers."""
    return Limits(
        config.read_rate,
        config.read_burst,
        config.write_rate,
        config.write_burst,
        workers=config.workers,
        backoff_ceiling=config.auth_backoff_max,
    )


def node_registry(config: Config, store: Store, *, clock: Clock = time.time) -> Registry:
    """The registry with the node's keys (created on first use under the data directory)."""
    try:
        sealer = Sealer.load_or_create(config.sealing_key_path)
        node_key = NodeKey.load_or_create(config.node_key_path)
        audit_key = AuditKey.load_or_create(config.audit_key_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"node keys: {exc}") from None
    registry = Registry(store, clock=clock, sealer=sealer, node_key=node_key, audit_key=audit_key)
    if config.advertise_url:
        registry.site = functools.partial(
            site_value, config.advertise_url, handle_port=config.handle_port
        )
    return registry


async def bootstrap(config: Config, registry: Registry) -> None:
    """Home IDNODE_BOOTSTRAP_PREFIX on first start."""
    prefix = config.bootstrap_prefix
    if not prefix or await registry.store.is_homed(prefix):
        return
    secret = config.bootstrap_secret
    if secret is None:
        secret = secrets.token_urlsafe(24)
        path = config.data_dir / "bootstrap-secret"
        config.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        print(
            f"idnode: homed {prefix}; admin 300:0.NA/{prefix} secret {secret} "
            f"(also written to {path}, mode 600; shown once)",
            flush=True,
        )
    await registry.home_prefix(prefix, secret, actor="bootstrap")
    log.info("bootstrap prefix %s homed", prefix)


class NotReady(Exception):
    """Start-up must wait for something another process does."""


async def bring_up(
    config: Config, registry: Registry, startup: api.Startup, *, first: bool
) -> None:
    """Migrate, home the bootstrap prefix (first worker only) and publish the node's key,
    retrying with back-off while the database cannot be reached; ``startup`` says how it goes.

    Every worker runs this (migrations are advisory-locked, publishing is idempotent), so
    a node whose database is down at start-up comes up when it is back.
    """
    delay = 0.25
    while True:
        startup.attempts += 1
        try:
            async with registry.store.pool.acquire() as conn:
                await migrate.migrate(conn)
            if first:
                await bootstrap(config, registry)
            elif config.bootstrap_prefix and not await registry.store.is_homed(
                config.bootstrap_prefix
            ):
                raise NotReady("the first worker has not homed the bootstrap prefix yet")
            await registry.publish_node_key()
            await registry.publish_site()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            problem = f"waiting for the database ({type(exc).__name__}: {exc})"
        except ClientError as exc:
            problem = f"waiting for the database ({exc.message})"
        except NotReady as exc:
            problem = f"waiting: {exc}"
        else:
            startup.done, startup.problem = True, ""
            if startup.attempts > 1:
                log.info("database reachable; node ready after %d attempts", startup.attempts)
            return
        startup.problem = f"{problem}; attempt {startup.attempts}"
        log.warning("start-up: %s; retrying in %.1f s", startup.problem, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, STARTUP_RETRY_MAX)


def create_app(
    config: Config,
    dsn: str,
    *,
    clock: Clock = time.time,
    monotonic: Clock = time.monotonic,
    metrics: Metrics | None = None,
    first_worker: bool = True,
) -> web.Application:
    """The node's application. At start-up it migrates the database (and, in the first
    worker, homes the bootstrap prefix); while the database is unreachable it serves
    ``/healthz``, ``/metrics`` and 503s that say why, and keeps trying."""
    app = web.Application(
        client_max_size=config.max_body_bytes, middlewares=[errors_and_metrics, via_middleware]
    )
    metrics = metrics or Metrics()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(dsn, min_size=0, max_size=config.db_pool_size)  # connects lazily
        store = Store(pool)
        registry = node_registry(config, store, clock=clock)
        sessions = Sessions(store, idle_seconds=config.session_idle_seconds, clock=clock)
        security = Security(tls=config.tls, dev_mode=config.dev_mode)
        authn = Authenticator(
            registry.authority, sessions, registry.node_key, security, limits_for(config)
        )
        metrics.watch_pool(store)
        recursion = Recursion(config, store, metrics, clock=monotonic)
        pipeline: Stage = recursion.below_cache(StoreStage(store, metrics))
        listener = cache = None
        if config.cache_max_entries:
            cache = Cache(
                max_entries=config.cache_max_entries,
                max_age=config.cache_max_age,
                negative_ttl=config.cache_negative_ttl,
                stale_for=config.cache_stale_seconds,
                clock=monotonic,
            )
            store.on_change.append(cache.invalidate)
            metrics.watch_cache(cache)
            pipeline = CacheStage(pipeline, cache)
            listener = Listener(dsn, cache)
            listener.start()
        pipeline = recursion.above_cache(pipeline)
        startup = api.Startup()
        app[api.NODE] = api.Node(
            store, registry, pipeline, metrics, authn, listener, cache, config, startup
        )
        flusher = asyncio.create_task(_flush_metrics(metrics))
        starting = asyncio.create_task(bring_up(config, registry, startup, first=first_worker))
        checkpointer = audit_api.Checkpointer(
            store,
            registry,
            every_entries=config.checkpoint_entries,
            every_seconds=config.checkpoint_seconds,
            clock=clock,
        )
        checkpointing = asyncio.create_task(checkpointer.run(lambda: startup.done))
        await asyncio.wait({starting}, timeout=STARTUP_WAIT_SECONDS)  # then serve: 503s say why
        dns = await dns_front.serve(app[api.NODE])  # None unless IDNODE_DNS_PORT is set
        handle_face = await handle_server.start(config, pipeline, metrics, cache)
        yield
        for face in (dns, handle_face):
            if face is not None:
                await face.stop()
        for task in (flusher, starting, checkpointing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if listener is not None:
            await listener.stop()
        await recursion.close()
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_SECONDS)
        except TimeoutError:
            log.warning(
                "PostgreSQL connections still busy after %s s; closing them", POOL_CLOSE_SECONDS
            )
            pool.terminate()

    app.cleanup_ctx.append(lifecycle)
    audit_api.add_routes(app)  # first: /api/handles/{handle}/history
    api.add_routes(app)
    authn_routes(app, lambda request: request.app[api.NODE].authn)
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/metrics", metrics_endpoint, name="metrics")
    search_api.add_routes(app)
    templates_api.add_routes(app)
    batch_api.add_routes(app)
    trace_api.add_routes(app)
    browser.add_routes(app)  # last: every other GET path is an identifier
    return app
