"""The resolution pipeline every front-end calls.

Each stage has the same shape, ``async resolve(handle) -> Record | None``, so a
stage can wrap another (a cache in front of the store, an upstream behind it)
without the front-ends knowing.
"""

from __future__ import annotations

from typing import Protocol

from registry.handle import Handle
from registry.store import Record, Store


class Stage(Protocol):
    async def resolve(self, h: Handle) -> Record | None: ...


class StoreStage:
    """Answers from PostgreSQL for prefixes homed here; 301 for the rest."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def resolve(self, h: Handle) -> Record | None:
        await self.store.require_homed(h.homing_prefix, h.text)
        return await self.store.get(h)
