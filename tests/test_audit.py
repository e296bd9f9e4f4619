"""The audit log (issue 8): entries in the writing transaction, gap-free under concurrency,
append-only in the database; the Merkle tree and signed checkpoints, proven with the
standalone verifier (``registry/verify.py``); tamper detection by ``idnode audit verify``;
history; the filing export."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from registry import audit, merkle, migrate, tree, verify
from registry import handle as hs
from registry import values as hv
from registry.auth import Identity
from registry.errors import StoreError, TemplateViolation
from registry.keys import AuditKey
from registry.registry import Registry
from registry.store import Store, create_pool
from resolver.app import node_registry
from tests.conftest import URL_VALUE, Tenant, data_template, node_config, run_idnode


def value(index: int, data: str, type_: str = "URL") -> hv.Value:
    return hv.Value(index, type_, "string", data, timestamp="2026-11-30T00:00:00Z")


class Log:
    """A registry over a database of its own, with its own audit key."""

    def __init__(self, registry: Registry, db: str, key: AuditKey, key_path: Path) -> None:
        self.registry = registry
        self.store = registry.store
        self.db = db
        self.key = key
        self.key_path = key_path

    async def write(self, prefix: str, suffix: str, data: str) -> None:
        who = Identity(300, hs.parse(f"0.NA/{prefix}"))
        h = hs.parse(f"{prefix}/{suffix}")
        await self.registry.put_record(who, h, [value(1, data)])

    async def checkpoint(self) -> asyncpg.Record | None:
        async with self.store.pool.acquire() as conn:
            return await tree.make_checkpoint(conn, self.key, self.registry.clock)

    async def rows(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.store.pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    async def tamper(self, sql: str, *args: Any) -> None:
        """Run SQL with the append-only triggers off, as a superuser could."""
        conn = await asyncpg.connect(self.db)
        try:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(sql, *args)
        finally:
            await conn.close()


@pytest.fixture
async def log(fresh_db: str, key_dir: Path, tmp_path: Path) -> AsyncIterator[Log]:
    pool = await create_pool(fresh_db, max_size=6)
    try:
        async with pool.acquire() as conn:
            await migrate.migrate(conn)
        key_path = tmp_path / "audit.pem"
        config = node_config(key_dir, audit_key=key_path)
        registry = node_registry(config, Store(pool))
        assert registry.audit_key is not None
        yield Log(registry, fresh_db, registry.audit_key, key_path)
    finally:
        await pool.close()


async def test_every_change_is_one_entry_with_the_digests_of_before_and_after(log: Log) -> None:
    reg = log.registry
    await reg.home_prefix("88.300.1", "s3cret")
    who = Identity(300, hs.parse("0.NA/88.300.1"))
    h = hs.parse("88.300.1/Part-1")
    token = audit.CLIENT.set("192.0.2.7")
    try:
        await reg.put_record(who, h, [value(1, "https://a.example")])
        await reg.put_values(who, h, [value(2, "ops@example.com", "EMAIL")], [2])
        await reg.put_record(who, h, [value(1, "https://b.example")])
        await reg.delete_values(who, h, [1])
        await reg.delete_record(who, h)
        await reg.set_template(who, "88.300.1", data_template({}))
    finally:
        audit.CLIENT.reset(token)
    rows = await log.rows("SELECT * FROM audit_log ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(len(rows)))
    assert [r["operation"] for r in rows] == [
        "home-prefix",
        "create",
        "put-values",
        "replace",
        "delete-values",
        "delete",
        "template-set",
    ]
    assert rows[0]["client"] is None  # the operator's command, no client address
    assert {r["client"] for r in rows[1:]} == {"192.0.2.7"}
    assert {r["actor"] for r in rows[1:]} == {"300:0.NA/88.300.1"}
    record_rows = rows[1:6]
    assert record_rows[0]["before"] is None
    for previous, row in zip(record_rows, record_rows[1:], strict=False):
        assert row["before"] == previous["after"]  # each change starts where the last ended
    for row in rows:
        if row["content"] is not None:
            assert bytes(row["after"]) == hashlib.sha256(row["content"].encode()).digest()
    assert record_rows[-1]["after"] is None and record_rows[-1]["content"] is None
    assert rows[6]["before"] is None and orjson.loads(rows[6]["content"])["type"] == "object"
    assert [r["indexes"] for r in record_rows] == [[1, 100], [2], [1], [1], None]


async def test_the_log_tree_and_checkpoints_are_append_only(log: Log) -> None:
    await log.registry.home_prefix("88.300.2", "s3cret")
    assert await log.checkpoint() is not None
    for sql in (
        "UPDATE audit_log SET actor = 'someone else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "UPDATE audit_tree SET hash = '\\x00'",
        "DELETE FROM audit_tree",
        "UPDATE audit_checkpoints SET size = 0",
        "DELETE FROM audit_checkpoints",
        "TRUNCATE audit_checkpoints",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await log.rows(sql)
    assert len(await log.rows("SELECT 1 FROM audit_log")) == 1


async def test_a_failed_write_leaves_no_entry_and_no_gap(log: Log) -> None:
    reg = log.registry
    await reg.home_prefix("88.300.3", "s3cret")
    who = Identity(300, hs.parse("0.NA/88.300.3"))
    url = {"x-handle": {"type": "URL"}, "type": "string"}
    await reg.set_template(who, "88.300.3", data_template({"url": url}, "url"))
    with pytest.raises(TemplateViolation):
        await reg.put_record(who, hs.parse("88.300.3/x"), [value(2, "x", "EMAIL")])
    await log.write("88.300.3", "y", "https://y.example")
    rows = await log.rows("SELECT seq, operation FROM audit_log ORDER BY seq")
    assert [(r["seq"], r["operation"]) for r in rows] == [
        (0, "home-prefix"),
        (1, "template-set"),
        (2, "create"),
    ]
    assert (await log.rows("SELECT size FROM audit_head"))[0]["size"] == 3


async def test_the_change_and_its_entry_are_one_transaction(log: Log) -> None:
    """If appending the entry fails, the change itself is not there: no write without entry."""
    await log.registry.home_prefix("88.300.4", "s3cret")
    await log.tamper(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'audit storage failed'; END $$;"
        " CREATE TRIGGER refuse BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse()"
    )
    with pytest.raises(StoreError, match="audit storage failed"):
        await log.write("88.300.4", "lost", "https://lost.example")
    assert await log.store.get(hs.parse("88.300.4/lost")) is None
    assert len(await log.rows("SELECT 1 FROM audit_log")) == 1


async def test_concurrent_writers_get_gap_free_numbers_and_one_consistent_tree(log: Log) -> None:
    await log.registry.home_prefix("88.300.5", "s3cret")
    await asyncio.gather(
        *(log.write("88.300.5", f"p{i}", f"https://{i}.example") for i in range(60))
    )
    rows = await log.rows("SELECT seq, at FROM audit_log ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(61))
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)  # times follow numbers
    async with log.store.pool.acquire() as conn:
        assert await tree.integrate(conn) == 61
    checker = verify.LogChecker()
    async with log.store.pool.acquire() as conn:
        async for row in audit.entries(conn, 0):
            checker.add(audit.entry_json(row), row["content"], bytes(row["leaf"]))
        assert checker.root() == await tree.root_at(conn, 61)


async def test_sql_and_python_build_the_same_leaf_for_awkward_entries(log: Log) -> None:
    """The node hashes leaves in SQL, the verifier in Python, each from the format's text."""
    changes = [
        audit.Change("300:0.NA/88.300.6", "create", "88.300.6/äöü 中文", [1, 2], None, "[]"),
        audit.Change("node", "delete", "88.300.6/x", None, "[]", None, client=None),
        audit.Change("", "put-values", "88.300.6/y", [], "a", "b", client="2001:db8::1"),
    ]
    async with log.store.pool.acquire() as conn, conn.transaction():
        await audit.append(conn, changes[:1])
        await audit.append(conn, changes[1:])
    async with log.store.pool.acquire() as conn:
        await tree.integrate(conn)
        rows = [row async for row in audit.entries(conn, 0)]
    assert len(rows) == 3
    for row in rows:
        assert verify.entry_leaf_hash(audit.entry_json(row)) == bytes(row["leaf"])


def _tree(n: int) -> tuple[list[bytes], Callable[[int, int], bytes]]:
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    return leaves, lambda start, end: merkle.root(leaves[start:end])


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 16, 31, 33])
def test_proof_ranges_give_proofs_the_rfc_verifier_accepts(n: int) -> None:
    leaves, mth = _tree(n)
    root = mth(0, n)
    for m in range(n):
        path = [mth(s, e) for s, e in tree.inclusion_ranges(m, n)]
        assert merkle.verify_inclusion(leaves[m], m, n, path, root)
    for m in range(1, n + 1):
        path = [mth(s, e) for s, e in tree.consistency_ranges(m, n)]
        assert merkle.verify_consistency(m, n, mth(0, m), root, path)
    for first in range(n + 1):
        for end in range(first, n + 1):
            proof = [mth(s, e) for s, e in tree.outside_ranges(n, first, end)]
            assert verify.range_root(n, first, leaves[first:end], proof) == root
    for start in range(n):
        for end in range(start + 1, n + 1):
            parts = tree.decomposition(start, end)
            assert sum(1 << level for level, _ in parts) == end - start


async def _proof_setup(log: Log) -> list[asyncpg.Record]:
    await log.registry.home_prefix("88.300.7", "s3cret")
    checkpoints = []
    for batch in range(3):
        for i in range(5 + batch * 4):
            await log.write("88.300.7", f"b{batch}-{i}", f"https://{batch}.{i}.example")
        made = await log.checkpoint()
        assert made is not None
        checkpoints.append(made)
    assert await log.checkpoint() is None  # nothing new: no new checkpoint
    return checkpoints


async def test_inclusion_and_consistency_proofs_check_out_with_the_standalone_verifier(
    log: Log,
) -> None:
    checkpoints = await _proof_setup(log)
    sizes = [c["size"] for c in checkpoints]
    key = log.key.public
    async with log.store.pool.acquire() as conn:
        for size in sizes:
            for seq in range(size):
                proof = await tree.inclusion_proof(conn, seq, size, log.key)
                entry = audit.entry_json(await audit.entry(conn, seq))
                assert verify.verify_inclusion_proof(proof, key, entry).size == size
                wrong = {**entry, "actor": "mallory"}
                with pytest.raises(verify.VerificationError, match="not the proven leaf"):
                    verify.verify_inclusion_proof(proof, key, wrong)
        for first in sizes:
            for second in sizes:
                if first <= second:
                    proof = await tree.consistency_proof(conn, first, second, log.key)
                    verify.verify_consistency_proof(proof, key)
        other = AuditKey.load_or_create(log.key_path.with_name("other.pem"))
        proof = await tree.inclusion_proof(conn, 0, None, log.key)
        with pytest.raises(verify.VerificationError, match="not signed by the audit key"):
            verify.verify_inclusion_proof(proof, other.public)
        proof["path"] = proof["path"][1:]
        with pytest.raises(verify.VerificationError, match="not in the tree"):
            verify.verify_inclusion_proof(proof, key)


# --- idnode audit verify: tampering is detected and named ---------------------------------


def _cli(log: Log, *args: str) -> Any:
    env = {
        **os.environ,
        "DATABASE_URL": log.db,
        "IDNODE_DATA_DIR": str(log.key_path.parent),
        "IDNODE_AUDIT_KEY": str(log.key_path),
    }
    return run_idnode("audit", *args, env=env)


TAMPERING = {
    "changed row": (
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3",
        "entry 3 does not match the leaf hash logged for it",
    ),
    "deleted row": ("DELETE FROM audit_log WHERE seq = 4", "entry 4 is missing"),
    "reordered rows": (
        "UPDATE audit_log SET seq = -1 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 5;"
        " UPDATE audit_log SET seq = 5 WHERE seq = -1",
        "entry 2 does not match the leaf hash logged for it",
    ),
    "changed content": (
        "UPDATE audit_log SET content = '[]' WHERE seq = 6",
        "entry 6: its content does not match its digest",
    ),
    "row and its leaf rewritten": (
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 1;"
        " UPDATE audit_tree SET hash = sha256('\\x00'::bytea || (SELECT audit_leaf(seq, at,"
        " actor, client, operation, handle, indexes, before, after) FROM audit_log"
        " WHERE seq = 1)) WHERE level = 0 AND idx = 1",
        "checkpoint of size 6 does not match the log's entries 5 and before",
    ),
    "forged checkpoint root": (
        "UPDATE audit_checkpoints SET root = sha256('forged'),"
        " body = replace(body, encode(root, 'base64'), encode(sha256('forged'), 'base64'))"
        " WHERE size = 15",
        "checkpoint of size 15 is not signed by the audit key",
    ),
    "checkpoint beyond the log": (
        "DELETE FROM audit_log WHERE seq >= 20; UPDATE audit_head SET size = 20",
        "checkpoint of size 28 covers entries the log does not have",
    ),
}


@pytest.mark.parametrize("kind", TAMPERING)
async def test_audit_verify_names_what_was_tampered_with(log: Log, kind: str) -> None:
    await _proof_setup(log)
    ok = _cli(log, "verify")
    assert ok.returncode == 0, ok.stderr
    assert "ok: 28 entries, 3 checkpoints" in ok.stdout
    sql, named = TAMPERING[kind]
    await log.tamper(sql)
    bad = _cli(log, "verify")
    assert bad.returncode == 1, bad.stdout
    assert named in bad.stderr, bad.stderr


async def test_a_checkpoint_signed_by_another_key_is_refused(log: Log) -> None:
    await _proof_setup(log)
    await log.registry.home_prefix("88.300.8", "s3cret")
    stranger = AuditKey.load_or_create(log.key_path.with_name("stranger.pem"))
    async with log.store.pool.acquire() as conn:
        assert await tree.make_checkpoint(conn, stranger, log.registry.clock) is not None
    bad = _cli(log, "verify")
    assert bad.returncode == 1
    assert "checkpoint of size 29 is not signed by the audit key" in bad.stderr


async def test_verify_from_a_checkpoint_and_with_a_pinned_key(log: Log) -> None:
    await _proof_setup(log)
    pinned = base64.b64encode(log.key.public).decode()
    ok = _cli(log, "verify", "--from-checkpoint", "15", "--public-key", pinned)
    assert ok.returncode == 0, ok.stderr
    assert "from entry 15" in ok.stdout
    await log.tamper("UPDATE audit_log SET actor = 'mallory' WHERE seq = 20")
    bad = _cli(log, "verify", "--from-checkpoint", "15")
    assert bad.returncode == 1 and "entry 20 does not match" in bad.stderr
    missing = _cli(log, "verify", "--from-checkpoint", "13")
    assert missing.returncode == 1 and "no checkpoint of size 13" in missing.stderr
    wrong_key = _cli(log, "verify", "--public-key", "not-a-key")
    assert wrong_key.returncode == 2 and "--public-key" in wrong_key.stderr


# --- the filing export ----------------------------------------------------------------


async def test_filing_export_verifies_independently_and_detects_edits(log: Log) -> None:
    await log.registry.home_prefix("88.300.9", "s3cret")
    await log.registry.home_prefix("88.300.10", "s3cret")
    for i in range(7):
        await log.write("88.300.9" if i % 2 else "88.300.10", f"e{i}", f"https://{i}.example")
    who = Identity(300, hs.parse("0.NA/88.300.9"))
    await log.registry.delete_record(who, hs.parse("88.300.9/e1"))
    since = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).isoformat()
    until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)).isoformat()
    whole = _cli(log, "export", "--from", since, "--to", until)
    assert whole.returncode == 0, whole.stderr
    lines = [orjson.loads(line) for line in whole.stdout.splitlines()]
    header = verify.verify_filing(lines, log.key.public)
    assert (header["firstSeq"], header["endSeq"]) == (0, 10)
    counts = next(line for line in lines if line["type"] == "counts")["prefixes"]
    assert counts["88.300.9"] == {"registered": 4, "changed": 0, "deleted": 1, "live": 2}
    assert counts["88.300.10"] == {"registered": 5, "changed": 0, "deleted": 0, "live": 4}
    one = _cli(log, "export", "--from", since, "--to", until, "--prefix", "88.300.9")
    assert one.returncode == 0, one.stderr
    mine = [orjson.loads(line) for line in one.stdout.splitlines()]
    verify.verify_filing(mine, log.key.public)
    kinds = [line["type"] for line in mine]
    assert kinds.count("entry") == 5 and kinds.count("leaf") == 5
    assert {line["prefix"] for line in mine if line["type"] == "entry"} == {"88.300.9"}
    edited = [
        {**line, "actor": "mallory"} if line.get("seq") == 3 and line["type"] == "entry" else line
        for line in lines
    ]
    with pytest.raises(verify.VerificationError, match="do not give the signed root"):
        verify.verify_filing(edited, log.key.public)
    inflated = [
        {**line, "prefixes": {**line["prefixes"], "88.300.9": {**counts["88.300.9"], "deleted": 0}}}
        if line["type"] == "counts"
        else line
        for line in lines
    ]
    with pytest.raises(verify.VerificationError, match="deleted"):
        verify.verify_filing(inflated, log.key.public)
    bad = _cli(log, "export", "--from", "yesterday", "--to", until)
    assert bad.returncode == 2 and "not a date" in bad.stderr


# --- over HTTP --------------------------------------------------------------------------


async def test_checkpoint_proof_and_consistency_endpoints(
    node: Any, tenant: Callable[..., Any], key_dir: Path
) -> None:
    t: Tenant = await tenant()
    http = node.session
    for i in range(3):
        async with http.put(
            node.api(t.handle(f"p{i}")), json={"values": [URL_VALUE]}, headers=t.auth
        ) as r:
            assert r.status == 201
    async with http.post(f"{node.url}/api/audit/checkpoint") as r:
        assert r.status == 401
    async with http.post(f"{node.url}/api/audit/checkpoint", headers=t.auth) as r:
        assert r.status == 201
        made = await r.json()
    key = AuditKey.load_or_create(key_dir / "audit.pem").public
    assert made["publicKey"] == base64.b64encode(key).decode()
    assert made["note"].startswith(made["body"] + "\n\u2014 idnode/")
    async with http.get(f"{node.url}/api/audit/checkpoint") as r:
        latest = await r.json()
    assert verify.verify_checkpoint(latest, key).size == made["size"]
    async with http.get(f"{node.url}/api/audit/proof", params={"handle": t.handle("p1")}) as r:
        assert r.status == 200
        proof = await r.json()
    assert "entry" not in proof  # anonymous: hashes only
    verify.verify_inclusion_proof(proof, key)
    async with http.get(
        f"{node.url}/api/audit/proof", params={"handle": t.handle("p1")}, headers=t.auth
    ) as r:
        mine = await r.json()
    assert mine["entry"]["handle"] == t.handle("p1") and mine["entry"]["operation"] == "create"
    verify.verify_inclusion_proof(mine, key, mine["entry"])
    async with http.get(
        f"{node.url}/api/audit/consistency", params={"first": "1", "second": str(made["size"])}
    ) as r:
        assert r.status in (200, 404)  # size 1 is a checkpoint only if the log started here
    async with http.get(
        f"{node.url}/api/audit/consistency", params={"first": str(made["size"])}
    ) as r:
        assert r.status == 200
        verify.verify_consistency_proof(await r.json(), key)
    bad = {
        "seq=x": 400,
        "seq=-1": 400,
        f"seq={made['size']}": 400,  # beyond the checkpoint's tree
        "seq=1&handle=a/b": 400,
        "": 400,
        "seq=0&size=999999999": 404,
        "handle=88.118.999999/none": 404,
        "handle=not a handle": 400,
    }
    for query, status in bad.items():
        async with http.get(f"{node.url}/api/audit/proof?{query}") as r:
            body = await r.json()
            assert r.status == status, (query, body)
            assert body["message"] and "responseCode" in body
    for query in ("", "first=abc", f"first={made['size'] + 10**6}"):
        async with http.get(f"{node.url}/api/audit/consistency?{query}") as r:
            assert r.status in (400, 404), query
            assert (await r.json())["message"]


async def test_history_lists_versions_for_admins_only(
    node: Any, tenant: Callable[..., Any]
) -> None:
    t: Tenant = await tenant()
    other: Tenant = await tenant()
    http = node.session
    url = node.api(t.handle("Engine-7"))
    email = {"index": 2, "type": "EMAIL", "data": "a@example.com"}
    async with http.put(url, json={"values": [URL_VALUE]}, headers=t.auth) as r:
        assert r.status == 201
    async with http.put(url, params={"index": "2"}, json={"values": [email]}, headers=t.auth) as r:
        assert r.status == 200
    async with http.delete(url, params={"index": "1"}, headers=t.auth) as r:
        assert r.status == 200
    async with http.get(f"{url}/history") as r:
        assert r.status == 401
    async with http.get(f"{url}/history", headers=other.auth) as r:
        assert r.status == 403
    async with http.get(f"{url}/history", headers=t.auth) as r:
        assert r.status == 200
        history = await r.json()
    versions = history["versions"]
    assert [v["operation"] for v in versions] == ["create", "put-values", "delete-values"]
    assert versions[0]["changes"] == {"added": [1, 100], "modified": [], "removed": []}
    assert versions[1]["changes"] == {"added": [2], "modified": [], "removed": []}
    assert versions[2]["changes"] == {"added": [], "modified": [], "removed": [1]}
    assert versions[0]["actor"] == t.identity and "client" not in versions[0]
    async with http.get(
        f"{node.url}/api/history/{t.handle('Engine-7')}",
        params={"seq": str(versions[1]["seq"])},
        headers=t.auth,
    ) as r:
        assert r.status == 200
        past = await r.json()
    assert sorted(v["index"] for v in past["values"]) == [1, 2, 100]
    async with http.get(
        f"{url}/history", params={"limit": "1", "after": str(versions[0]["seq"])}, headers=t.auth
    ) as r:
        page = await r.json()
    assert [v["seq"] for v in page["versions"]] == [versions[1]["seq"]]
    assert page["next"] == str(versions[1]["seq"])
    for query, status in (("seq=0", 404), ("limit=100000", 400), ("seq=abc", 400)):
        async with http.get(f"{url}/history?{query}", headers=t.auth) as r:
            assert r.status == status, query
    async with http.delete(url, headers=t.auth) as r:
        assert r.status == 200
    async with http.get(f"{url}/history", headers=t.auth) as r:  # deleted: still its admin's
        assert [v["operation"] for v in (await r.json())["versions"]][-1] == "delete"
    named = node.api(t.handle("x/history"))
    async with http.put(named, json={"values": [URL_VALUE]}, headers=t.auth) as r:
        assert r.status == 201
    async with http.get(named) as r:  # a record whose name ends in /history still resolves
        assert r.status == 200 and (await r.json())["handle"] == t.handle("x/history")
    async with http.get(node.api(t.handle("never/history")), headers=t.auth) as r:
        assert r.status == 404


async def test_batches_append_one_entry_per_operation_in_order(
    node: Any, tenant: Callable[..., Any], store: Store
) -> None:
    t: Tenant = await tenant()
    lines = [
        {"op": "create", "handle": t.handle("b1"), "values": [URL_VALUE]},
        {"op": "create", "handle": t.handle("b2"), "values": [URL_VALUE]},
        {"op": "delete", "handle": t.handle("b1")},
    ]
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    headers = {**t.auth, "Content-Type": "application/x-ndjson"}
    for mode in ("atomic", "each"):
        async with node.session.post(
            f"{node.url}/api/batch", params={"mode": mode}, data=body, headers=headers
        ) as r:
            assert r.status == 200
            await r.read()
    failing = body + orjson.dumps({"op": "delete", "handle": t.handle("none")}) + b"\n"
    async with node.session.post(
        f"{node.url}/api/batch", params={"mode": "atomic"}, data=failing, headers=headers
    ) as r:
        assert r.status == 200
        await r.read()
    rows = await store.pool.fetch(
        "SELECT seq, operation, handle, before, after, client FROM audit_log"
        " WHERE handle_key LIKE $1 ORDER BY seq",
        f"{t.prefix}/%",
    )
    assert [(r["operation"], r["handle"]) for r in rows] == [
        ("create", t.handle("b1")),
        ("create", t.handle("b2")),
        ("delete", t.handle("b1")),
        ("create", t.handle("b1")),  # the second batch: b2 is unchanged, so no entry
        ("delete", t.handle("b1")),
    ]
    assert rows[2]["before"] == rows[0]["after"] and rows[2]["after"] is None
    assert {r["client"] for r in rows} == {"127.0.0.1"}
    seqs = [r["seq"] for r in await store.pool.fetch("SELECT seq FROM audit_log ORDER BY seq")]
    assert seqs == list(range(len(seqs)))


async def test_the_production_role_of_the_readme_cannot_touch_the_log(log: Log) -> None:
    """The README's SQL, run as written: the node works as that role, the log stays its own."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("**Append-only in the database.**") :]
    block = section[section.index("```sql\n") + 7 : section.index("```\n", section.index("```sql"))]
    role = f"idnode_app_{os.urandom(4).hex()}"
    statements = [
        line.replace("idnode_app", role).replace("'…'", "'app-secret'")
        for line in block.splitlines()
        if line.strip() and not line.startswith("--")
    ]
    owner = await asyncpg.connect(log.db)
    try:
        for statement in statements:
            await owner.execute(statement)
    finally:
        await owner.close()
    base, _, query = log.db.partition("?")
    scheme, _, rest = base.partition("://")
    authority, _, database = rest.partition("/")
    host = authority.rpartition("@")[2]
    url = f"{scheme}://{role}:app-secret@{host}/{database}" + (f"?{query}" if query else "")
    pool = await create_pool(url, max_size=2)
    try:
        registry = node_registry(
            node_config(log.key_path.parent, audit_key=log.key_path), Store(pool)
        )
        assert await registry.home_prefix("88.300.11", "s3cret")
        async with pool.acquire() as conn:
            await tree.integrate(conn)
            assert await tree.make_checkpoint(conn, log.key, registry.clock) is not None
            for sql in (
                "UPDATE audit_log SET actor = 'x'",
                "DELETE FROM audit_log",
                "TRUNCATE audit_log",
                "DELETE FROM audit_checkpoints",
                "ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only",
                "DROP TRIGGER audit_log_append_only ON audit_log",
                "SET session_replication_role = replica",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
    finally:
        await pool.close()
