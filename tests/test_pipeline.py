"""The store stage coalesces concurrent misses into one query, without mixing answers up."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from registry import values as hv
from registry.errors import NotResponsible
from registry.handle import Handle, parse
from registry.registry import Registry
from registry.store import Record, Store
from resolver.pipeline import StoreStage, resolve
from tests.conftest import TenantFactory


class CountingStore(Store):
    def __init__(self, store: Store) -> None:
        super().__init__(store.pool)
        self.batches: list[int] = []

    async def lookup_many(self, handles: Sequence[Handle]) -> list[tuple[bool, Record | None]]:
        self.batches.append(len(handles))
        return await super().lookup_many(handles)


async def test_concurrent_misses_share_one_query(
    store: Store, registry: Registry, tenant: TenantFactory
) -> None:
    t = await tenant()

    for n in range(30):
        value = hv.Value(1, "URL", "string", f"https://example.com/{n}", timestamp="x")
        await registry.put_record(
            await registry.authority.authenticate(t.identity, t.secret),
            parse(t.handle(f"b{n}")),
            [value],
        )
    counting = CountingStore(store)
    stage = StoreStage(counting)
    names = [t.handle(f"b{n}") for n in range(30)] + [t.handle("absent")]
    entries = await asyncio.gather(*(resolve(stage, parse(name)) for name in names))
    assert counting.batches == [31]
    for n, entry in enumerate(entries[:30]):
        assert entry.record is not None
        assert entry.record.values[0].data == f"https://example.com/{n}"
    assert entries[30].record is None


async def test_unhomed_handle_fails_alone(store: Store, tenant: TenantFactory) -> None:
    t = await tenant()
    stage = StoreStage(store)
    ours, foreign = await asyncio.gather(
        resolve(stage, parse(t.handle("x"))),
        resolve(stage, parse("99.999/x")),
        return_exceptions=True,
    )
    assert not isinstance(ours, BaseException) and ours.record is None
    assert isinstance(foreign, NotResponsible)
    with pytest.raises(NotResponsible):
        await resolve(stage, parse("99.999/y"))
