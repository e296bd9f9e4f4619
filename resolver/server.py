"""Running the node: preparation, worker processes sharing one port, signals.

``idnode serve`` prepares the database once (migrations, the bootstrap prefix),
then runs ``IDNODE_WORKERS`` serving processes that all listen on the same port
with ``SO_REUSEPORT``; the kernel spreads connections over them. Each worker has
its own cache, kept coherent through ``LISTEN``. SIGTERM or SIGINT stops
accepting, lets in-flight requests finish, and exits 0. A worker that dies is
started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import tempfile
import time
from multiprocessing.process import BaseProcess

import uvloop
from aiohttp import web

from registry.errors import ConfigError
from resolver import api
from resolver.app import (
    connection_handler,
    create_app,
    limits_for,
    tls_context,
)
from resolver.commands import fewer_collections
from resolver.config import Config
from resolver.fastpath import FastPath, FastProtocol
from resolver.logs import configure_logging
from resolver.metrics import MULTIPROCESS_ENV, Metrics

log = logging.getLogger("idnode")


def listening_socket(host: str, port: int) -> socket.socket:
    """A server socket; every worker binds its own to the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_worker(
    config: Config, dsn: str, stop: asyncio.Event, *, first: bool = True
) -> None:
    """Serve until ``stop`` is set, then shut down gracefully.

    ``first``: this worker homes the bootstrap prefix (once, however many workers).
    """
    metrics = Metrics(multiprocess=MULTIPROCESS_ENV in os.environ)
    app = create_app(config, dsn, metrics=metrics, first_worker=first)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    node = app[api.NODE]
    loop = asyncio.get_running_loop()
    aiohttp_server = runner.server
    assert aiohttp_server is not None
    fast = (
        FastPath(
            node.cache,
            node.pipeline,
            metrics,
            node.authn.limits,
            config.header_timeout,
            node.startup,
        )
        if node.cache is not None
        else None
    )

    def handler() -> asyncio.Protocol:
        return connection_handler(aiohttp_server)

    def protocol() -> asyncio.Protocol:
        return handler() if fast is None else FastProtocol(fast, handler)

    fewer_collections()
    servers = [await loop.create_server(protocol, sock=listening_socket(config.host, config.port))]
    log.info("worker %d serving on http://%s:%d", os.getpid(), config.host, config.port)
    context = tls_context(config) if config.tls else None
    if context is not None:
        tls = listening_socket(config.host, config.tls_port)
        servers.append(await loop.create_server(protocol, sock=tls, ssl=context))
        log.info("worker %d serving on https://%s:%d", os.getpid(), config.host, config.tls_port)
    loop.add_signal_handler(signal.SIGHUP, reload, node, context)
    try:
        await stop.wait()
    finally:
        for server in servers:
            server.close()
        if fast is not None:
            for conn in list(fast.connections):
                conn.close()
        aiohttp_server.pre_shutdown()  # idle keep-alive connections close now, not at the deadline
        await aiohttp_server.shutdown(config.shutdown_grace)
        await runner.cleanup()


def reload(node: api.Node, context: ssl.SSLContext | None) -> None:
    """SIGHUP: re-read the configuration and apply what can change without a restart.

    The log level and format, the per-client limits and the TLS certificate (new
    handshakes use it; open connections keep theirs) change; a setting that is
    invalid now leaves everything as it was, and says so in the log.
    """
    try:
        fresh = Config.from_env()
        if context is not None and fresh.tls_cert is not None and fresh.tls_key is not None:
            context.load_cert_chain(fresh.tls_cert, fresh.tls_key)
    except ConfigError as exc:
        log.error("reload refused: %s", exc.message)
        return
    except (OSError, ssl.SSLError) as exc:
        log.error("reload refused: IDNODE_TLS_CERT, IDNODE_TLS_KEY: cannot load them (%s)", exc)
        return
    configure_logging(fresh)
    node.authn.limits.adopt(limits_for(fresh))
    log.info("worker %d reloaded its configuration", os.getpid())


def _run_worker(config: Config, dsn: str, first: bool = True) -> None:
    """A worker process's main: serve until SIGTERM or SIGINT."""
    configure_logging(config)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve_worker(config, dsn, stop, first=first)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def run(config: Config, dsn: str) -> int:
    """Serve with ``config.workers`` processes (each brings the node up, retrying while the
    database is unreachable); answers the exit status."""
    if config.tls:
        tls_context(config)  # a bad certificate or key stops start-up here, once
    print(
        f"idnode: serving on http://{config.host}:{config.port} with {config.workers} worker(s)",
        flush=True,
    )
    if config.tls:
        print(f"idnode: serving on https://{config.host}:{config.tls_port}", flush=True)
        if config.dev_mode:
            print(
                "idnode: DEVELOPMENT MODE: writes and credentials over plain HTTP are accepted"
                " from loopback",
                flush=True,
            )
    else:
        print(
            "idnode: no TLS configured (IDNODE_TLS_CERT, IDNODE_TLS_KEY): credentials travel"
            " in clear unless a TLS proxy fronts this node",
            flush=True,
        )
    if config.workers == 1:
        _run_worker(config, dsn)
        return 0
    return _supervise(config, dsn)


def _supervise(config: Config, dsn: str) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="idnode-metrics-")
    os.environ[MULTIPROCESS_ENV] = metrics_dir
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start(first: bool) -> BaseProcess:
        proc = ctx.Process(target=_run_worker, args=(config, dsn, first), daemon=False)
        proc.start()
        return proc

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hangup(signum: int, frame: object) -> None:
        for proc in workers:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGHUP)  # each worker reloads (see ``reload``)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    workers = [start(n == 0) for n in range(config.workers)]
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        while not stopping:
            time.sleep(0.2)
            for n, proc in enumerate(workers):
                if not proc.is_alive() and not stopping:
                    log.error("worker %s exited with %s; starting another", proc.pid, proc.exitcode)
                    Metrics.worker_gone(proc.pid)
                    workers[n] = start(n == 0)
    finally:
        for proc in workers:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in workers:
            proc.join(config.shutdown_grace + 5)
            if proc.is_alive():
                proc.kill()
        with contextlib.suppress(OSError):
            shutil.rmtree(metrics_dir)
    return 0
