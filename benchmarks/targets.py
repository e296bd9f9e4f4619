"""The three servers under test, each a context manager yielding its base URL.

- nginx answering the same JSON bytes from memory (``return 200``), one worker;
- the naive baseline (``benchmarks/naive.py``): aiohttp + one asyncpg fetch per request;
- the node itself: ``idnode serve`` on the benchmark database.

Each runs pinned to core 1 and is stopped when its block ends, error or not.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks.system import find_binary, free_port, server

NODE_WORKERS = 1
"""One serving process, like nginx's one worker: the server side has one core."""

NGINX_CONF = """\
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 '{body}'; }}
    }}
}}
"""


def nginx_conf(workdir: Path, port: int, body: bytes) -> str:
    text = body.decode("ascii")
    if any(c in text for c in "'\\$"):
        raise ValueError("the answer must not contain ', \\ or $ to be inlined in nginx.conf")
    return NGINX_CONF.format(dir=workdir, port=port, body=text)


@contextlib.contextmanager
def nginx(workdir: Path, body: bytes) -> Iterator[str]:
    """nginx answering ``body`` to every GET."""
    binary = find_binary("nginx")
    if binary is None:
        raise RuntimeError("nginx is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(nginx_conf(workdir, port, body), encoding="ascii")
    argv = [binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
    base = f"http://127.0.0.1:{port}"
    with server("nginx", argv, ready_url=base + "/", log=workdir / "nginx.out"):
        yield base


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDNODE_")}
    env.update(extra)
    return env


@contextlib.contextmanager
def naive(dsn: str, workdir: Path) -> Iterator[str]:
    """The naive baseline: one ``fetchrow`` per request."""
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.naive", str(port)]
    base = f"http://127.0.0.1:{port}"
    env = _clean_env(DATABASE_URL=dsn)
    with server("naive", argv, ready_url=base + "/", log=workdir / "naive.log", env=env):
        yield base


@contextlib.contextmanager
def node(
    dsn: str, workdir: Path, log: Path, workers: int = NODE_WORKERS, **settings: str
) -> Iterator[str]:
    """``idnode serve`` of this checkout on the benchmark database, warnings and errors logged
    to ``log``; ``settings`` are more ``IDNODE_*`` variables (``IDNODE_DNS_PORT="5353"``)."""
    port = free_port()
    env = _clean_env(
        DATABASE_URL=dsn,
        IDNODE_HOST="127.0.0.1",
        IDNODE_PORT=str(port),
        IDNODE_LOG_LEVEL="WARNING",
        IDNODE_WORKERS=str(workers),
        IDNODE_DATA_DIR=str(workdir),
        # wrk sends tens of thousands of requests a second from one address: the per-client
        # limits would measure the limiter, not the node
        IDNODE_READ_RATE="0",
        IDNODE_WRITE_RATE="0",
        **settings,
    )
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "resolver.cli", "serve"]  # this checkout's code (cwd=ROOT)
    with server("idnode", argv, ready_url=base + "/healthz", log=log, env=env):
        yield base
