"""``POST /api/batch``: many operations in one request, streamed both ways.

The body is NDJSON (``application/x-ndjson``, one operation per line) or a JSON
array (``application/json``), read as it arrives and never held whole in
memory. The answer is NDJSON too: one line per operation, as soon as it is
known, then a summary line. ``mode=atomic`` (the default) applies all or
nothing; ``mode=each`` lets every operation succeed or fail alone. What the
operations are and how they are written is ``registry.bulk``'s business.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import ijson
import orjson
from aiohttp import web

from registry import bulk
from registry.errors import (
    AuthenticationNeeded,
    ClientError,
    IdNodeError,
    PayloadTooLarge,
    ProtocolError,
    RequestTimeout,
    UnsupportedMediaType,
)
from resolver.api import NODE, flag
from resolver.config import Config

log = logging.getLogger("idnode.batch")

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
READ_SIZE = 65536


class _Body:
    """The request body as an async file: bounded in size, each read bounded in time."""

    def __init__(self, request: web.Request, config: Config) -> None:
        self._content = request.content
        self._config = config
        self.received = 0

    async def read(self, n: int = -1) -> bytes:
        if n == 0:
            return b""
        try:
            async with asyncio.timeout(self._config.body_timeout):
                data = await self._content.read(READ_SIZE if n < 0 else min(n, READ_SIZE))
        except TimeoutError:
            raise RequestTimeout(
                f"the batch body stalled for {self._config.body_timeout:g} s"
            ) from None
        except (ConnectionError, OSError, ValueError) as exc:  # aiohttp's payload errors too
            raise ProtocolError(f"the upload broke off: {exc}") from None
        self.received += len(data)
        if self.received > self._config.batch_max_bytes:
            raise PayloadTooLarge(
                f"the batch is larger than IDNODE_BATCH_MAX_BYTES ({self._config.batch_max_bytes})"
            )
        return data


async def ndjson_items(
    body: _Body, timestamp: str, *, max_line: int, max_items: int
) -> AsyncIterator[bulk.Item]:
    """One item per non-blank line; its position is the line number."""
    pending = bytearray()
    line = count = 0
    done = False
    while not done:
        data = await body.read(READ_SIZE)
        done = not data
        pending += data if data else b"\n"
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            if end - start > max_line:
                raise PayloadTooLarge(f"line {line + 1} is longer than {max_line} bytes")
            raw = bytes(pending[start:end])
            start = end + 1
            line += 1
            if not raw.strip():
                continue
            count += 1
            if count > max_items:
                raise PayloadTooLarge(
                    f"the batch has more than IDNODE_BATCH_MAX_ITEMS ({max_items}) operations"
                )
            yield bulk.parse_line(raw, line, timestamp=timestamp)
        del pending[:start]
        if len(pending) > max_line:
            raise PayloadTooLarge(f"line {line + 1} is longer than {max_line} bytes")


async def array_items(body: _Body, timestamp: str, *, max_items: int) -> AsyncIterator[bulk.Item]:
    """One item per element of a JSON array; its position is the element's number."""
    position = 0
    try:
        async for doc in ijson.items(body, "item", use_float=True):
            position += 1
            if position > max_items:
                raise PayloadTooLarge(
                    f"the batch has more than IDNODE_BATCH_MAX_ITEMS ({max_items}) operations"
                )
            yield bulk.parse_item(doc, position, timestamp=timestamp)
    except ijson.JSONError as exc:
        detail = str(exc).splitlines()[0]
        raise ProtocolError(
            f"the body is not a valid JSON array after item {position}: {detail}"
        ) from None


def _mode(raw: str | None) -> bulk.Mode:
    try:
        return bulk.Mode(raw or bulk.Mode.ATOMIC)
    except ValueError:
        raise ProtocolError(f"mode must be atomic or each, not {raw!r}") from None


async def post_batch(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    config = node.config
    mode = _mode(request.query.get("mode"))
    overwrite = flag(request.query, "overwrite", True)
    if request.content_type not in (*NDJSON_TYPES, "application/json"):
        raise UnsupportedMediaType(
            "send the batch as application/x-ndjson (one operation per line)"
            f" or application/json (an array), not {request.content_type!r}"
        )
    if request.content_length is not None and request.content_length > config.batch_max_bytes:
        raise PayloadTooLarge(
            f"the batch is larger than IDNODE_BATCH_MAX_BYTES ({config.batch_max_bytes})"
        )
    who = await node.authn.caller(request, needs_identity=True)
    if who is None:
        raise AuthenticationNeeded("a batch needs an authenticated prefix admin")
    body = _Body(request, config)
    timestamp = node.registry.timestamp()
    items = (
        array_items(body, timestamp, max_items=config.batch_max_items)
        if request.content_type == "application/json"
        else ndjson_items(
            body, timestamp, max_line=config.max_body_bytes, max_items=config.batch_max_items
        )
    )
    writer = bulk.BulkWriter(node.registry, who, actor=str(who), overwrite=overwrite)
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)

    async def emit(outcomes: Sequence[bulk.Outcome]) -> None:
        await response.write(b"".join(orjson.dumps(o.to_json()) + b"\n" for o in outcomes))

    try:
        summary = await bulk.run(writer, items, mode=mode, emit=emit)
    except bulk.CallerGone:
        return response  # nobody to tell; what was not committed was rolled back
    except IdNodeError as exc:  # the database failed mid-batch: say so in the stream
        if not isinstance(exc, ClientError):
            log.error("batch stopped: %s", exc.message)
        message = exc.message if isinstance(exc, ClientError) else "internal server error"
        failed = {
            "summary": {
                "mode": str(mode),
                "committed": mode is bulk.Mode.EACH,
                "message": f"the batch stopped: {message}; operations without a result line"
                " were not applied",
            }
        }
        with contextlib.suppress(ConnectionError):
            await response.write(orjson.dumps(failed) + b"\n")
        return response
    applied = "applied" if summary.committed else "rolled_back"
    node.metrics.batch_operations.labels(applied).inc(summary.succeeded)
    node.metrics.batch_operations.labels("failed").inc(summary.failed)
    await response.write(orjson.dumps(summary.to_json()) + b"\n")
    await response.write_eof()
    return response


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/batch", post_batch, name="batch")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The batch API has no command of its own: ``idnode import`` shares its engine."""
