"""Cache coherence across processes: ``LISTEN idnode_changes``.

Every write transaction sends ``NOTIFY idnode_changes`` with the changed
handles' keys, one per line (a bulk write packs thousands into one payload). Each
serving process keeps one dedicated connection listening on that channel and
drops the announced keys from its cache. When that connection is lost the cache
is distrusted (nothing is served as fresh, recent entries only as stale while
the database is down) until a new connection listens again; then the cache is
flushed, since notifications may have been missed in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from registry.store import CHANNEL
from resolver.cache import Cache

log = logging.getLogger("idnode.invalidation")


class Listener:
    """Keeps a LISTEN connection open and feeds the cache."""

    def __init__(
        self,
        dsn: str,
        cache: Cache,
        *,
        probe_interval: float = 2.0,
        retry_max: float = 2.0,
    ) -> None:
        self.dsn = dsn
        self.cache = cache
        self.probe_interval = probe_interval
        self.retry_max = retry_max
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.cache.trusted = False  # nothing is cached until the first LISTEN is up
        self._task = asyncio.create_task(self._run(), name="idnode-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self.cache.invalidate(payload.split("\n"))

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("LISTEN connection failed (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            delay = 0.05
            try:
                await self._listen(conn)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("LISTEN connection lost; cache distrusted until it is back")
            finally:
                self.connected.clear()
                self.cache.distrust()
                if not conn.is_closed():
                    conn.terminate()

    async def _listen(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(CHANNEL, self._notified)
        self.cache.flush()
        self.cache.trust()
        self.connected.set()
        log.info("listening for changes")
        while not lost.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lost.wait(), self.probe_interval)
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=self.probe_interval)
