"""The resolution pipeline every front-end calls.

Each stage has the same shape, ``lookup(handle) -> Future[Entry]`` (awaited
through ``resolve``), so a stage can wrap another (the cache in front of the
store, an upstream behind it) without the front-ends knowing. An ``Entry``
carries the record and its public values already encoded, so front-ends on the
hot path do no JSON work.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from functools import partial
from typing import Any, Protocol

import orjson

from registry.errors import (
    ClientError,
    HandleNotFound,
    NotResponsible,
    ServerTooBusy,
    ValuesNotFound,
)
from registry.handle import Handle
from registry.store import Record, Store
from resolver.cache import Cache, Entry
from resolver.metrics import Metrics

DEFAULT_MAX_AGE = 86400


class Stage(Protocol):
    """One stage of resolution.

    ``lookup`` answers a future, so a front-end can attach a callback and a
    miss costs no task; ``authoritative`` asks for the source of truth, not a
    cache. The future is shared with other callers: await it through
    ``resolve``, which shields it from the caller's cancellation.
    """

    def lookup(self, h: Handle, *, authoritative: bool = False) -> asyncio.Future[Entry]: ...


async def resolve(stage: Stage, h: Handle, *, authoritative: bool = False) -> Entry:
    """Await a stage's answer for ``h``."""
    return await asyncio.shield(stage.lookup(h, authoritative=authoritative))


def encode(record: Record | None) -> Entry:
    """Encode a record's public values once, with their ETag and max-age.

    A record whose values are all public is served with its stored bytes as they are.
    """
    if record is None:
        return Entry(None)
    if record.all_public:
        body = record.raw
        max_age = record.public_ttl if record.public_ttl is not None else DEFAULT_MAX_AGE
    else:
        public = [v for v in record.values if v.public_read]
        body = orjson.dumps([v.to_json() for v in public])
        max_age = min((v.ttl for v in public), default=DEFAULT_MAX_AGE)
    # weak: answers for other spellings of the handle differ only in the echoed name
    etag = 'W/"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    return Entry(record, body, etag, max_age)


def _consume(flight: asyncio.Future[Any]) -> None:
    """Mark a fetch's failure as seen even when every waiter has gone away."""
    if not flight.cancelled():
        flight.exception()


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` or any listed tag, compared weakly."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


def unanswerable(entry: Entry, text: str) -> ClientError | None:
    """Why a plain resolution of ``text`` shows no values: not found, or none public."""
    if entry.record is None:
        return HandleNotFound(handle=text)
    if entry.public == b"[]" and entry.record.values:
        return ValuesNotFound(handle=text)
    return None


def public_body(text: str, entry: Entry) -> bytes:
    """The JSON answer to a plain resolution, from the entry's pre-encoded values."""
    return b'{"responseCode":1,"handle":' + orjson.dumps(text) + b',"values":' + entry.public + b"}"


class StoreStage:
    """Answers from PostgreSQL for prefixes homed here; responseCode 301 for the rest.

    Lookups that arrive in the same turn of the event loop are coalesced into one
    query (``unnest`` of up to ``max_batch`` keys), so a burst of cache misses
    costs one round trip instead of one each.
    """

    def __init__(self, store: Store, metrics: Metrics | None = None, max_batch: int = 256) -> None:
        self.store = store
        self.metrics = metrics
        self.max_batch = max_batch
        self._waiting: list[tuple[Handle, asyncio.Future[Entry]]] = []

    def lookup(self, h: Handle, *, authoritative: bool = False) -> asyncio.Future[Entry]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Entry] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._dispatch)
        self._waiting.append((h, future))
        return future

    def _dispatch(self) -> None:
        waiting, self._waiting = self._waiting, []
        for start in range(0, len(waiting), self.max_batch):
            batch = waiting[start : start + self.max_batch]
            task = asyncio.create_task(self._lookup(batch))
            task.add_done_callback(_consume)

    async def _lookup(self, batch: list[tuple[Handle, asyncio.Future[Entry]]]) -> None:
        started = time.perf_counter()
        try:
            answers = await self.store.lookup_many([h for h, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        if self.metrics is not None:
            self.metrics.db_query_duration.observe(time.perf_counter() - started)
        for (h, future), (homed, record) in zip(batch, answers, strict=True):
            if future.done():
                continue
            if homed:
                future.set_result(encode(record))
            else:
                future.set_exception(
                    NotResponsible(
                        f"prefix {h.homing_prefix} is not homed on this node", handle=h.text
                    )
                )


class CacheStage:
    """Serves fresh entries from the cache; one fetch per key at a time below it.

    When the stage below fails because the database is unavailable, an entry
    that stopped being fresh recently is served stale instead.
    """

    def __init__(self, inner: Stage, cache: Cache) -> None:
        self.inner = inner
        self.cache = cache

    def lookup(self, h: Handle, *, authoritative: bool = False) -> asyncio.Future[Entry]:
        if authoritative:
            return self.inner.lookup(h, authoritative=True)
        key = h.key
        entry = self.cache.fresh(key)
        if entry is not None:
            done: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
            done.set_result(entry)
            return done
        flight = self.cache.flight(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self.cache.begin(key, flight)
            self.inner.lookup(h).add_done_callback(partial(self._fetched, key, flight))
        return flight

    def _fetched(
        self, key: str, flight: asyncio.Future[Entry], below: asyncio.Future[Entry]
    ) -> None:
        if below.cancelled() or below.exception() is not None:
            self.cache.end(key, flight)
            exc = below.exception() if not below.cancelled() else ServerTooBusy("lookup cancelled")
            stale = self.cache.stale(key) if isinstance(exc, ServerTooBusy) else None
            if not flight.done():
                if stale is not None:
                    flight.set_result(stale)
                else:
                    flight.set_exception(exc or ServerTooBusy())
            return
        entry = below.result()
        self.cache.fill(key, flight, entry)
        if not flight.done():
            flight.set_result(entry)
