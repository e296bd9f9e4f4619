"""The naive baseline: aiohttp on uvloop, one asyncpg ``fetchrow`` per request, no cache.

``python -m benchmarks.naive PORT`` with ``DATABASE_URL`` set serves
``GET /api/handles/{prefix}/{suffix}`` from the ``handles`` table, answering the
stored values (JSON text, decoded and re-encoded compactly with orjson) as the
node does; 404 with responseCode 100 when there is no row.
"""

from __future__ import annotations

import os
import sys

import asyncpg
import orjson
import uvloop
from aiohttp import web

from registry.handle import fold

POOL = web.AppKey("pool", asyncpg.Pool)
QUERY = (
    'SELECT handle, "values"::text AS "values" FROM handles'
    " WHERE prefix_key = $1 AND suffix_key = $2"
)
POOL_SIZE = 10


async def resolve(request: web.Request) -> web.Response:
    prefix, suffix = request.match_info["prefix"], request.match_info["suffix"]
    text = f"{prefix}/{suffix}"
    row = await request.app[POOL].fetchrow(QUERY, fold(prefix), fold(suffix))
    if row is None:
        body = {"responseCode": 100, "handle": text, "message": "handle not found"}
        return web.Response(body=orjson.dumps(body), status=404, content_type="application/json")
    body = {"responseCode": 1, "handle": text, "values": orjson.loads(row["values"])}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def open_pool(app: web.Application) -> None:
    dsn = os.environ["DATABASE_URL"]
    app[POOL] = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)


async def close_pool(app: web.Application) -> None:
    await app[POOL].close()


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/handles/{prefix}/{suffix:.+}", resolve)
    app.on_startup.append(open_pool)
    app.on_cleanup.append(close_pool)
    return app


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8081
    web.run_app(
        create_app(),
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        backlog=1024,
        shutdown_timeout=1.0,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
