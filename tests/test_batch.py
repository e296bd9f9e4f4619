"""``POST /api/batch`` from a client's side: both modes, every kind of bad batch."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from registry.registry import Registry
from registry.store import NOTIFY_PAYLOAD_BYTES, Store, notification_payloads
from tests.conftest import RunningNode, Tenant, TenantFactory, data_template, running, served

NDJSON = {"Content-Type": "application/x-ndjson"}


def url_value(target: str, index: int = 1) -> dict[str, Any]:
    return {"index": index, "type": "URL", "data": {"format": "string", "value": target}}


def create(handle: str, target: str = "https://example.com/p") -> dict[str, Any]:
    return {"op": "create", "handle": handle, "values": [url_value(target)]}


def ndjson(*ops: object) -> bytes:
    return b"".join(orjson.dumps(op) + b"\n" for op in ops)


async def batch(
    node: RunningNode, t: Tenant, body: bytes, *, json_array: bool = False, **params: str
) -> tuple[int, list[dict[str, Any]]]:
    headers = {
        **t.auth,
        "Content-Type": "application/json" if json_array else NDJSON["Content-Type"],
    }
    async with node.session.post(
        f"{node.url}/api/batch", data=body, headers=headers, params=params
    ) as r:
        text = await r.read()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    return r.status, lines


async def records(node: RunningNode, *handles: str) -> dict[str, list[dict[str, Any]] | None]:
    found: dict[str, list[dict[str, Any]] | None] = {}
    for h in handles:
        async with node.session.get(node.api(h)) as r:
            found[h] = (await r.json())["values"] if r.status == 200 else None
    return found


def summary(lines: list[dict[str, Any]]) -> dict[str, Any]:
    assert "summary" in lines[-1], lines[-1]
    result: dict[str, Any] = lines[-1]["summary"]
    return result


async def test_each_mode_streams_one_result_per_operation(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    handles = [t.handle(f"E{i}") for i in range(3)]
    status, lines = await batch(node, t, ndjson(*(create(h) for h in handles)), mode="each")
    assert status == 200
    assert lines[:-1] == [
        {"item": i + 1, "handle": h, "responseCode": 1, "message": "created"}
        for i, h in enumerate(handles)
    ]
    assert summary(lines) == {
        "mode": "each",
        "items": 3,
        "succeeded": 3,
        "failed": 0,
        "committed": True,
        "message": "3 applied, 0 failed",
    }
    found = await records(node, *handles)
    assert all(v and v[0]["data"]["value"] == "https://example.com/p" for v in found.values())


async def test_batch_operations_are_counted(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()

    def counted(outcome: str) -> float:
        node.metrics.flush()
        found = node.metrics.registry.get_sample_value(
            "idnode_batch_operations_total", {"outcome": outcome}
        )
        return found or 0.0

    before = {o: counted(o) for o in ("applied", "rolled_back", "failed")}
    await batch(node, t, ndjson(create(t.handle("m1")), create(t.handle("m2"))), mode="each")
    await batch(node, t, ndjson(create(t.handle("m3"))) + b"nope\n", mode="atomic")
    assert counted("applied") - before["applied"] == 2
    assert counted("rolled_back") - before["rolled_back"] == 1
    assert counted("failed") - before["failed"] == 1


async def test_atomic_json_array_is_the_default_mode(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    handles = [t.handle(f"A{i}") for i in range(3)]
    body = orjson.dumps([create(h) for h in handles])
    status, lines = await batch(node, t, body, json_array=True)
    assert status == 200
    assert [line["responseCode"] for line in lines[:-1]] == [1, 1, 1]
    assert summary(lines)["mode"] == "atomic" and summary(lines)["committed"] is True
    assert None not in (await records(node, *handles)).values()


@pytest.mark.parametrize("mode", ["each", "atomic"])
async def test_malformed_line_in_the_middle(
    node: RunningNode, tenant: TenantFactory, mode: str
) -> None:
    t = await tenant()
    first, last = t.handle("M1"), t.handle("M3")
    body = ndjson(create(first)) + b'{"op": "create", "handle": \n' + ndjson(create(last))
    status, lines = await batch(node, t, body, mode=mode)
    assert status == 200
    assert lines[1]["item"] == 2 and lines[1]["responseCode"] == 4
    assert "line 2" in lines[1]["message"] and "not JSON" in lines[1]["message"]
    found = await records(node, first, last)
    if mode == "each":
        assert lines[0]["responseCode"] == lines[2]["responseCode"] == 1
        assert None not in found.values()
        assert summary(lines)["failed"] == 1 and summary(lines)["committed"] is True
    else:
        assert found == {first: None, last: None}
        assert summary(lines)["committed"] is False
        assert summary(lines)["message"].startswith("nothing was written")


@pytest.mark.parametrize("mode", ["each", "atomic"])
async def test_malformed_json_array_stops_where_it_breaks(
    node: RunningNode, tenant: TenantFactory, mode: str
) -> None:
    t = await tenant()
    first, second = t.handle("J1"), t.handle("J2")
    body = b"[" + orjson.dumps(create(first)) + b"," + orjson.dumps(create(second)) + b", {nope"
    status, lines = await batch(node, t, body, json_array=True, mode=mode)
    assert status == 200
    end = summary(lines)
    assert end["error"]["responseCode"] == 4
    assert "not a valid JSON array after item" in end["error"]["message"]
    found = await records(node, first, second)
    # a syntax error ends an array: what was answered before it stands (each mode), the
    # rest is not applied; NDJSON is the format where a bad line fails alone
    applied = {line["handle"] for line in lines[:-1] if line["responseCode"] == 1}
    assert {h for h, v in found.items() if v is not None} == applied
    if mode == "atomic":
        assert applied == set() or end["committed"] is False
        assert found == {first: None, second: None}


async def test_operations_that_are_not_operations_fail_alone(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    ok = t.handle("ok")
    body = ndjson(
        [1, 2],
        {"op": "rename", "handle": t.handle("x")},
        {"op": "create", "handle": t.handle("x")},
        {"op": "create", "handle": "no-slash", "values": []},
        {"op": "delete", "handle": t.handle("x"), "values": []},
        {"op": "create", "handle": t.handle("x"), "values": [{"index": "one"}]},
        {"op": "create", "handle": t.handle("x"), "values": [], "extra": 1},
        create(ok),
    )
    status, lines = await batch(node, t, body, mode="each")
    assert status == 200
    codes = [line["responseCode"] for line in lines[:-1]]
    assert codes[:-1] == [4, 4, 4, 102, 4, 202, 4] and codes[-1] == 1
    messages = [line["message"] for line in lines[:-1]]
    assert "op must be one of" in messages[1] and "create needs values" in messages[2]
    assert "extra" in messages[6]
    assert (await records(node, ok))[ok] is not None


async def test_duplicate_handles_in_one_batch_apply_in_order(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    h = t.handle("dup")
    body = ndjson(create(h, "https://one.example"), create(h, "https://two.example"))
    _, lines = await batch(node, t, body, mode="each", overwrite="false")
    assert [line["responseCode"] for line in lines[:-1]] == [1, 101]
    assert (await records(node, h))[h][0]["data"]["value"] == "https://one.example"  # type: ignore[index]
    _, lines = await batch(node, t, body, mode="each", overwrite="true")
    assert [line["message"] for line in lines[:-1]] == ["unchanged", "replaced"]
    assert (await records(node, h))[h][0]["data"]["value"] == "https://two.example"  # type: ignore[index]


async def test_resending_a_batch_is_safe(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    handles = [t.handle(f"R{i}") for i in range(4)]
    body = ndjson(*(create(h) for h in handles))
    await batch(node, t, body)
    before = await records(node, *handles)
    _, lines = await batch(node, t, body)  # overwrite=true by default: nothing changes
    assert [line["message"] for line in lines[:-1]] == ["unchanged"] * 4
    assert summary(lines)["committed"] is True
    assert await records(node, *handles) == before  # timestamps too
    _, lines = await batch(node, t, body, overwrite="false", mode="each")
    assert [line["responseCode"] for line in lines[:-1]] == [101] * 4
    assert all("already exists" in line["message"].lower() for line in lines[:-1])


@pytest.mark.parametrize("mode", ["each", "atomic"])
async def test_mixed_prefixes_are_authorised_per_prefix(
    node: RunningNode, tenant: TenantFactory, mode: str
) -> None:
    mine, theirs = await tenant(), await tenant()
    allowed = [mine.handle(f"P{i}") for i in range(3)]
    refused = [theirs.handle(f"P{i}") for i in range(3)]
    ops = [create(h) for pair in zip(allowed, refused, strict=True) for h in pair]
    _, lines = await batch(node, mine, ndjson(*ops), mode=mode)
    results = {line["handle"]: line for line in lines[:-1]}
    assert all(results[h]["responseCode"] == 400 for h in refused)
    assert all(f"0.NA/{theirs.prefix}" in results[h]["message"] for h in refused)
    found = await records(node, *allowed, *refused)
    assert all(found[h] is None for h in refused)
    if mode == "each":
        assert all(results[h]["responseCode"] == 1 for h in allowed)
        assert all(found[h] is not None for h in allowed)
    else:
        assert all(found[h] is None for h in allowed)


async def test_every_operation_kind(node: RunningNode, tenant: TenantFactory, store: Store) -> None:
    t = await tenant()
    a, b, c = t.handle("opA"), t.handle("opB"), t.handle("opC")
    email = {"index": 2, "type": "EMAIL", "data": "ops@example.com"}
    await batch(node, t, ndjson(create(a), create(b), create(c)))
    await records(node, a, b, c)  # now cached
    body = ndjson(
        {"op": "put-values", "handle": a, "values": [email, url_value("https://new.example")]},
        {"op": "replace", "handle": b, "values": [url_value("https://b.example", 5)]},
        {"op": "delete-values", "handle": a, "index": [2]},
        {"op": "delete", "handle": c},
        {"op": "delete-values", "handle": b, "index": [9]},
        {"op": "put-values", "handle": t.handle("none"), "values": [email]},
    )
    _, lines = await batch(node, t, body, mode="each")
    assert [line["responseCode"] for line in lines[:-1]] == [1, 1, 1, 1, 200, 100]
    found = await records(node, a, b, c)
    assert [v["index"] for v in found[a] or []] == [1, 100]
    assert (found[a] or [])[0]["data"]["value"] == "https://new.example"
    assert [v["index"] for v in found[b] or []] == [5]
    assert found[c] is None
    rows = await store.pool.fetch(
        "SELECT operation, actor FROM audit_log WHERE handle = ANY($1) ORDER BY seq", [a, b, c]
    )
    operations = [r["operation"] for r in rows]
    assert operations.count("create") == 3
    assert {"put-values", "replace", "delete-values", "delete"} <= set(operations)
    assert {r["actor"] for r in rows} == {t.identity}


async def test_many_chunks_in_each_and_atomic_mode(
    node: RunningNode, tenant: TenantFactory, store: Store
) -> None:
    t = await tenant()
    n = 4500  # more than two chunks
    body = ndjson(*(create(t.handle(f"N{i:05}")) for i in range(n)))
    _, lines = await batch(node, t, body, mode="each")
    assert summary(lines)["succeeded"] == n and len(lines) == n + 1
    bad = body + b"oops\n"
    other = await tenant()
    _, lines = await batch(node, other, bad.replace(t.prefix.encode(), other.prefix.encode()))
    assert summary(lines)["committed"] is False and summary(lines)["failed"] == 1
    counted = await store.pool.fetchval(
        "SELECT count(*) FROM handles WHERE prefix_key = ANY($1)", [t.prefix, other.prefix]
    )
    assert counted == n


async def test_request_level_errors(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    body = ndjson(create(t.handle("x")))
    async with aiohttp.ClientSession() as anonymous:  # no session cookie either
        async with anonymous.post(f"{node.url}/api/batch", data=body, headers=NDJSON) as r:
            assert r.status == 401 and (await r.json())["responseCode"] == 402
    headers = {**t.auth, "Content-Type": "text/csv"}
    async with node.session.post(f"{node.url}/api/batch", data=body, headers=headers) as r:
        assert r.status == 415 and "application/x-ndjson" in (await r.json())["message"]
    status, lines = await batch(node, t, body, mode="sometimes")
    assert status == 400 and "mode must be atomic or each" in lines[0]["message"]
    assert (await records(node, t.handle("x")))[t.handle("x")] is None


@pytest.fixture
async def small_node(db_url: str, tmp_path: Path, key_dir: Path) -> AsyncIterator[RunningNode]:
    async with running(
        db_url, tmp_path, key_dir, batch_max_items=5, batch_max_bytes=4096, max_body_bytes=2048
    ) as n:
        yield n


@pytest.mark.parametrize("mode", ["each", "atomic"])
async def test_batch_over_the_item_limit(
    small_node: RunningNode, tenant: TenantFactory, mode: str
) -> None:
    t = await tenant()
    handles = [t.handle(f"L{i}") for i in range(8)]
    _, lines = await batch(small_node, t, ndjson(*(create(h) for h in handles)), mode=mode)
    end = summary(lines)
    assert end["error"]["responseCode"] == 4
    assert "IDNODE_BATCH_MAX_ITEMS (5)" in end["error"]["message"]
    found = await records(small_node, *handles)
    assert all(found[h] is None for h in handles[5:])
    if mode == "each":
        assert all(found[h] is not None for h in handles[:5]) and end["succeeded"] == 5
    else:
        assert all(v is None for v in found.values()) and end["committed"] is False


async def test_batch_over_the_byte_limit(small_node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    body = ndjson(
        *(create(t.handle(f"B{i}"), "https://example.com/" + "x" * 900) for i in range(5))
    )
    assert len(body) > 4096
    status, lines = await batch(small_node, t, body)
    assert status == 413 and "IDNODE_BATCH_MAX_BYTES (4096)" in lines[0]["message"]
    long_line = ndjson(create(t.handle("long"), "https://example.com/" + "y" * 3000))

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: found while reading
        yield long_line

    headers = {**t.auth, **NDJSON}
    async with small_node.session.post(
        f"{small_node.url}/api/batch", data=chunked(), headers=headers
    ) as r:
        lines = [orjson.loads(x) for x in (await r.read()).splitlines()]
    assert "longer than 2048 bytes" in summary(lines)["error"]["message"]
    assert (await records(small_node, t.handle("long")))[t.handle("long")] is None


@pytest.mark.parametrize("mode", ["each", "atomic"])
async def test_connection_dropped_mid_upload(
    node: RunningNode, tenant: TenantFactory, store: Store, mode: str
) -> None:
    t = await tenant()
    host, port = node.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /api/batch?mode={mode} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: {t.auth['Authorization']}\r\n"
        "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    part = ndjson(*(create(t.handle(f"D{i}")) for i in range(3))) + b'{"op": "create", "han'
    writer.write(head.encode() + f"{len(part):x}\r\n".encode() + part + b"\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)
    writer.close()  # gone mid-line, before the last chunk
    await writer.wait_closed()
    rows: list[Any] = []
    for _ in range(50):  # the node notices the broken upload and finishes the batch
        await asyncio.sleep(0.1)
        rows = await store.pool.fetch(
            "SELECT \"values\" FROM handles WHERE prefix_key = $1 AND suffix_key <> ''", t.prefix
        )
        busy = await store.pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state IN ('active', 'idle in transaction') AND pid <> pg_backend_pid()"
        )
        if (mode == "each" and len(rows) == 3) or (mode == "atomic" and not busy):
            break
    if mode == "each":  # whole operations received before the break each stand alone
        assert len(rows) == 3
    else:
        assert rows == []
    assert not any(r["values"] == "[]" for r in rows)


async def test_template_violations_fail_alone(
    node: RunningNode, tenant: TenantFactory, registry: Registry
) -> None:
    t = await tenant()
    template = data_template(
        {
            "batch": {"type": "string", "pattern": "^B[0-9]+$", "x-handle": {"type": "BATCH"}},
            "qty": {"type": "integer", "minimum": 1, "x-handle": {"type": "QTY"}},
        },
        "batch",
    )
    await registry.operator_set_template(t.prefix, template)

    def record(suffix: str, batch_no: str, qty: str) -> dict[str, Any]:
        values = [
            {"index": 1, "type": "BATCH", "data": batch_no},
            {"index": 2, "type": "QTY", "data": qty},
        ]
        return {"handle": t.handle(suffix), "values": values}

    body = ndjson(record("ok", "B1", "5"), record("bad", "x1", "0"), record("ok2", "B2", "9"))
    _, lines = await batch(node, t, body, mode="each")
    assert [line["responseCode"] for line in lines[:-1]] == [1, 202, 1]
    assert sorted((e["field"], e["rule"]) for e in lines[1]["errors"]) == [
        ("batch", "pattern"),
        ("qty", "minimum"),
    ]
    assert (await records(node, t.handle("bad")))[t.handle("bad")] is None


async def test_sigterm_during_an_atomic_batch_writes_nothing(
    db_url: str, tenant: TenantFactory, store: Store, tmp_path: Path
) -> None:
    """The node drains in-flight requests on SIGTERM; a batch still uploading when the grace
    period (1 s here) ends is cut off and rolled back whole, and the node still exits 0."""
    t = await tenant()
    first = ndjson(*(create(t.handle(f"T{i}")) for i in range(2500)))  # more than a chunk
    stalled = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        yield first
        stalled.set()
        await asyncio.sleep(60)  # never finishes within the grace period
        yield ndjson(create(t.handle("never")))

    with served(db_url, tmp_path / "data", IDNODE_SHUTDOWN_GRACE="1") as (url, proc):
        headers = {**t.auth, **NDJSON}
        async with aiohttp.ClientSession() as session:
            posting = asyncio.ensure_future(
                session.post(f"{url}/api/batch", data=upload(), headers=headers)
            )
            await stalled.wait()
            for _ in range(100):  # the first chunk is written (not committed) by now
                await asyncio.sleep(0.1)
                locked = await store.pool.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid'"
                )
                if locked:
                    break
            assert locked, "the batch never started writing"
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            while proc.poll() is None and time.monotonic() - started < 30:
                await asyncio.sleep(0.2)
            posting.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await posting
        assert proc.returncode == 0
    count = await store.pool.fetchval(
        "SELECT count(*) FROM handles WHERE prefix_key = $1", t.prefix
    )
    assert count == 0


async def test_template_checked_in_every_chunk(
    node: RunningNode, tenant: TenantFactory, registry: Registry, store: Store
) -> None:
    """Later chunks are worked out while earlier ones are written: same answers."""
    t = await tenant()
    template = data_template(
        {"batch": {"type": "string", "pattern": "^B", "x-handle": {"type": "BATCH"}}}, "batch"
    )
    await registry.operator_set_template(t.prefix, template)

    def op(i: int) -> dict[str, Any]:
        data = "bad" if i % 1000 == 999 else f"B{i}"
        return {
            "handle": t.handle(f"C{i:05}"),
            "values": [{"index": 1, "type": "BATCH", "data": data}],
        }

    body = ndjson(*(op(i) for i in range(4500)))
    _, lines = await batch(node, t, body, mode="each")
    failed = [line for line in lines[:-1] if line["responseCode"] != 1]
    assert [line["item"] for line in failed] == [1000, 2000, 3000, 4000]
    assert all(
        line["responseCode"] == 202 and line["errors"][0]["rule"] == "pattern" for line in failed
    )
    stored_count = await store.pool.fetchval(
        "SELECT count(*) FROM handles WHERE prefix_key = $1", t.prefix
    )
    assert stored_count == 4496
    _, lines = await batch(node, t, body, mode="each")  # again: every record exists now
    assert [line["message"] for line in lines[:-1] if line["responseCode"] == 1] == [
        "unchanged"
    ] * 4496


def test_changed_keys_are_packed_into_few_notifications() -> None:
    keys = {f"88.118.1/{i:06d}-{'x' * 40}" for i in range(1000)}
    payloads = notification_payloads(keys)
    assert all(len(p.encode()) <= NOTIFY_PAYLOAD_BYTES < 8000 for p in payloads)
    assert sorted(k for p in payloads for k in p.split("\n")) == sorted(keys)
    assert len(payloads) <= -(-sum(len(k) + 1 for k in keys) // NOTIFY_PAYLOAD_BYTES) + 1
    assert notification_payloads({"88.1/a"}) == ["88.1/a"]
