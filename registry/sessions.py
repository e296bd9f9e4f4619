"""Sessions of the Handle challenge-response, in PostgreSQL so every process accepts them.

A session is created anonymous, with a random id and a random 16-byte nonce (the
server's half of the challenge). An answer to that nonce that proves an identity
authenticates the session; later requests name only the session id. A session
unused for ``idle_seconds`` is gone: it is refused, and swept from the table.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from registry.store import Store, translated

Clock = Callable[[], float]
NONCE_BYTES = 16
SWEEP_CHANCE = 0.02
"""Share of new sessions that also delete the expired ones."""


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    nonce: bytes
    identity: str | None
    """``<index>:<handle>`` once authenticated."""
    proof: bytes | None
    """SHA-256 of the Authorization header that authenticated it (accepted again as is)."""
    used_at: float


class Sessions:
    """Create, find, authenticate and end sessions."""

    def __init__(self, store: Store, *, idle_seconds: float, clock: Clock = time.time) -> None:
        self.store = store
        self.idle_seconds = idle_seconds
        self.clock = clock

    async def create(self) -> Session:
        now = self.clock()
        session = Session(secrets.token_urlsafe(24), os.urandom(NONCE_BYTES), None, None, now)
        async with translated():
            await self.store.pool.execute(
                "INSERT INTO sessions (id, nonce, created_at, used_at) VALUES ($1, $2, $3, $3)",
                session.id,
                session.nonce,
                now,
            )
            if random.random() < SWEEP_CHANCE:
                await self.sweep()
        return session

    async def get(self, session_id: str) -> Session | None:
        """The live session named ``session_id``; None when unknown or expired."""
        now = self.clock()
        async with translated():
            row = await self.store.pool.fetchrow(
                "SELECT id, nonce, identity, proof, used_at FROM sessions WHERE id = $1",
                session_id,
            )
            if row is None or now - row["used_at"] > self.idle_seconds:
                return None
            if now - row["used_at"] > self.idle_seconds / 10:
                await self.store.pool.execute(
                    "UPDATE sessions SET used_at = $2 WHERE id = $1", session_id, now
                )
        return Session(row["id"], row["nonce"], row["identity"], row["proof"], now)

    async def authenticate(self, session_id: str, identity: str, proof: bytes) -> None:
        async with translated():
            await self.store.pool.execute(
                "UPDATE sessions SET identity = $2, proof = $3, used_at = $4 WHERE id = $1",
                session_id,
                identity,
                proof,
                self.clock(),
            )

    async def delete(self, session_id: str) -> bool:
        async with translated():
            status = await self.store.pool.execute("DELETE FROM sessions WHERE id = $1", session_id)
        return bool(status.endswith(" 1"))

    async def sweep(self) -> None:
        async with translated():
            await self.store.pool.execute(
                "DELETE FROM sessions WHERE used_at < $1", self.clock() - self.idle_seconds
            )
