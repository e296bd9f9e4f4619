"""Traceability (registry/trace.py, resolver/trace_api.py, schemas/sql/007_references.sql):
the ``references`` field of a value, traces down and up through a real node, cycles, depth and
fan-out bombs, missing and foreign targets, private values, the reverse index kept current by
single writes and batches, and bad parameters."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry import values as hv
from registry.errors import InvalidValue
from registry.store import Store
from tests.conftest import ROOT, RunningNode, Tenant, TenantFactory
from tests.test_openapi import check_answer

NDJSON = {"Content-Type": "application/x-ndjson"}
Answer = tuple[int, dict[str, Any]]


def ref(handle: str, index: int | None = None) -> dict[str, Any]:
    return {"handle": handle} if index is None else {"handle": handle, "index": index}


def value(
    index: int, vtype: str, data: str, *targets: str, permissions: str | None = None
) -> dict[str, Any]:
    """A string value referencing ``targets`` (each the whole handle)."""
    out: dict[str, Any] = {"index": index, "type": vtype, "data": data}
    if targets:
        out["references"] = [ref(t) for t in targets]
    if permissions is not None:
        out["permissions"] = permissions
    return out


async def put(node: RunningNode, t: Tenant, handle: str, *values: dict[str, Any]) -> None:
    async with node.session.put(node.api(handle), json={"values": values}, headers=t.auth) as r:
        assert r.status in (200, 201), await r.text()


async def batch(node: RunningNode, t: Tenant, *ops: dict[str, Any], mode: str = "atomic") -> None:
    body = b"".join(orjson.dumps(op) + b"\n" for op in ops)
    async with node.session.post(
        f"{node.url}/api/batch", data=body, headers={**t.auth, **NDJSON}, params={"mode": mode}
    ) as r:
        lines = [orjson.loads(line) for line in (await r.read()).splitlines()]
    assert lines[-1]["summary"]["failed"] == 0, lines[-5:]


async def trace(node: RunningNode, handle: str, **params: str) -> Answer:
    async with node.session.get(f"{node.url}/api/trace/{handle}", params=params) as r:
        assert r.content_type == "application/json", await r.text()
        return r.status, await r.json()


async def traced(node: RunningNode, handle: str, **params: str) -> dict[str, Any]:
    status, body = await trace(node, handle, **params)
    assert status == 200, body
    return body


def statuses(body: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {n["handle"]: (n["status"], n["depth"]) for n in body["nodes"]}


def edges(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["from"], e["to"]) for e in body["edges"]}


# --- the references field ------------------------------------------------------------------


async def test_references_round_trip(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    refs = [ref(t.handle("ENGINE-1")), ref("99.7/LOT-9", 3), ref(t.handle("ECU-1"), 0)]
    await put(
        node,
        t,
        t.handle("VIN-1"),
        {"index": 1, "type": "URL", "data": "https://example.com/v/1"},
        {"index": 2, "type": "PARTS", "data": "engine, lot, ecu", "references": refs},
    )
    async with node.session.get(node.api(t.handle("VIN-1"))) as r:
        shown = (await r.json())["values"]
    assert "references" not in shown[0]  # a value without references looks as it always did
    assert shown[1]["references"] == [
        {"handle": t.handle("ENGINE-1"), "index": 0},
        {"handle": "99.7/LOT-9", "index": 3},
        {"handle": t.handle("ECU-1"), "index": 0},
    ]


@pytest.mark.parametrize(
    ("references", "message"),
    [
        ("88.1/x", "references must be an array"),
        ([["88.1/x", 0]], "must be an object"),
        ([{"index": 1}], "needs a string 'handle'"),
        ([{"handle": "no-slash"}], "no '/'"),
        ([{"handle": "88.1/"}], "empty suffix"),
        ([{"handle": "88.1/x", "index": -1}], "between 1 and"),
        ([{"handle": "88.1/x", "index": "one"}], "must be an integer"),
        ([{"handle": "88.1/x"}] * (hv.MAX_REFERENCES + 1), "at most 1024 references"),
        ([{"handle": "88.1/" + "x" * 2000}] * 40, "larger than 65536 bytes"),
    ],
)
async def test_bad_references_are_refused(
    node: RunningNode, tenant: TenantFactory, references: Any, message: str
) -> None:
    t = await tenant()
    body = {"values": [{"index": 1, "type": "PART", "data": "x", "references": references}]}
    async with node.session.put(node.api(t.handle("BAD")), json=body, headers=t.auth) as r:
        answer = await r.json()
    assert r.status == 400 and answer["responseCode"] == 202, answer
    assert message in answer["message"]


_handles = st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,3}){0,2}/[A-Za-z0-9._-]{1,20}", fullmatch=True)


@given(st.lists(st.tuples(_handles, st.integers(0, hv.MAX_INDEX)), max_size=20))
def test_references_survive_storage(pairs: list[tuple[str, int]]) -> None:
    raw = {"index": 1, "type": "PART", "data": "x", "references": [ref(h, i) for h, i in pairs]}
    parsed = hv.parse_value(raw, timestamp="2026-01-01T00:00:00Z")
    assert parsed.references == tuple(pairs)
    stored = orjson.loads(orjson.dumps(parsed.to_json()))
    assert hv.from_stored(stored) == parsed
    assert ("references" in stored) == bool(pairs)


def test_a_reference_without_index_means_the_whole_handle() -> None:
    raw = {"index": 1, "type": "PART", "data": "x", "references": [{"handle": "88.1/a"}]}
    assert hv.parse_value(raw, timestamp="").references == (("88.1/a", 0),)
    with pytest.raises(InvalidValue):
        hv.parse_value({**raw, "references": [{"handle": "88.1/a", "index": True}]}, timestamp="")


# --- traces --------------------------------------------------------------------------------


async def vehicle(node: RunningNode, t: Tenant) -> dict[str, str]:
    """Two vehicles sharing an engine batch; the batch from a coil lot of a foreign mill."""
    h = {name: t.handle(name) for name in ("VIN-A", "VIN-B", "ENG-1", "ENG-2", "BAT-1", "B-7")}
    coil = "99.8/COIL-42"
    await put(node, t, h["B-7"], value(1, "BATCH", "B-7 2026-03-01", coil))
    await put(node, t, h["ENG-1"], value(1, "PART", "engine 1"), value(2, "BATCH", "B-7", h["B-7"]))
    await put(node, t, h["ENG-2"], value(1, "PART", "engine 2"), value(2, "BATCH", "B-7", h["B-7"]))
    await put(node, t, h["BAT-1"], value(1, "PART", "battery pack"))
    await put(node, t, h["VIN-A"], value(1, "VIN", "A", h["ENG-1"], h["BAT-1"]))
    await put(node, t, h["VIN-B"], value(1, "VIN", "B", h["ENG-2"]))
    return {**h, "coil": coil}


async def test_trace_down_from_a_vehicle(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    h = await vehicle(node, t)
    body = await traced(node, h["VIN-A"])
    assert body["handle"] == h["VIN-A"] and body["direction"] == "down" and body["depth"] == 3
    assert statuses(body) == {
        h["VIN-A"]: ("found", 0),
        h["ENG-1"]: ("found", 1),
        h["BAT-1"]: ("found", 1),
        h["B-7"]: ("found", 2),
        h["coil"]: ("foreign", 3),
    }
    assert edges(body) == {
        (h["VIN-A"], h["ENG-1"]),
        (h["VIN-A"], h["BAT-1"]),
        (h["ENG-1"], h["B-7"]),
        (h["B-7"], h["coil"]),
    }
    first = body["edges"][0]
    assert first["via"] == {"index": 1, "type": "VIN"} and first["toIndex"] == 0
    engine = next(n for n in body["nodes"] if n["handle"] == h["ENG-1"])
    shown = [v["data"]["value"] for v in engine["values"] if v["type"] != "HS_ADMIN"]
    assert shown == ["engine 1", "B-7"]  # HS_ADMIN references are not traced
    foreign = next(n for n in body["nodes"] if n["status"] == "foreign")
    assert "values" not in foreign and body["truncated"] is False
    shallow = await traced(node, h["VIN-A"], depth="1")
    assert set(statuses(shallow)) == {h["VIN-A"], h["ENG-1"], h["BAT-1"]}


async def test_trace_up_from_a_batch(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    h = await vehicle(node, t)
    body = await traced(node, h["B-7"], direction="up")
    assert statuses(body) == {
        h["B-7"]: ("found", 0),
        h["ENG-1"]: ("found", 1),
        h["ENG-2"]: ("found", 1),
        h["VIN-A"]: ("found", 2),
        h["VIN-B"]: ("found", 2),
    }
    assert edges(body) == {
        (h["ENG-1"], h["B-7"]),
        (h["ENG-2"], h["B-7"]),
        (h["VIN-A"], h["ENG-1"]),
        (h["VIN-B"], h["ENG-2"]),
    }
    vin = next(n for n in body["nodes"] if n["handle"] == h["VIN-B"])
    assert vin["values"][0]["data"]["value"] == "B"


async def test_handles_match_case_insensitively(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    await put(node, t, t.handle("Part-1"), value(1, "PART", "p"))
    await put(node, t, t.handle("kit"), value(1, "KIT", "k", t.handle("PART-1")))
    down = await traced(node, t.handle("KIT"))
    assert statuses(down) == {t.handle("KIT"): ("found", 0), t.handle("Part-1"): ("found", 1)}
    up = await traced(node, t.handle("part-1"), direction="up")
    assert edges(up) == {(t.handle("kit"), t.handle("part-1"))}


async def test_cycles_and_self_references(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    a, b, c = t.handle("A"), t.handle("B"), t.handle("C")
    await batch(
        node,
        t,
        {"handle": a, "values": [value(1, "NEXT", "b", b, a)]},
        {"handle": b, "values": [value(1, "NEXT", "c", c)]},
        {"handle": c, "values": [value(1, "NEXT", "a", a), value(2, "SELF", "c", c)]},
    )
    for direction in ("down", "up"):
        body = await traced(node, a, direction=direction, depth="10")
        assert [n["handle"] for n in body["nodes"]] == (
            [a, b, c] if direction == "down" else [a, c, b]
        )
        assert edges(body) == {(a, b), (b, c), (c, a), (a, a), (c, c)}
        assert body["truncated"] is False


async def test_a_chain_of_fifty_is_cut_at_the_depth(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    chain = [t.handle(f"L{i:02d}") for i in range(50)]
    await batch(
        node,
        t,
        *(
            {"handle": chain[i], "values": [value(1, "FROM", "x", *chain[i + 1 : i + 2])]}
            for i in range(50)
        ),
    )
    assert [n["handle"] for n in (await traced(node, chain[0]))["nodes"]] == chain[:4]
    deep = await traced(node, chain[0], depth="10")
    assert [(n["handle"], n["depth"]) for n in deep["nodes"]] == [(chain[i], i) for i in range(11)]
    up = await traced(node, chain[49], direction="up", depth="10")
    assert [n["handle"] for n in up["nodes"]] == chain[39:][::-1]
    root_only = await traced(node, chain[0], depth="0")
    assert len(root_only["nodes"]) == 1 and root_only["edges"] == []


async def test_fan_out_and_fan_in_of_two_thousand(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    hub, parts = t.handle("HUB"), [t.handle(f"P{i:04d}") for i in range(2000)]
    hub_values = [value(1 + k, "PARTS", "x", *parts[k * 1000 : (k + 1) * 1000]) for k in (0, 1)]
    await batch(
        node,
        t,
        {"handle": hub, "values": hub_values},
        *({"handle": p, "values": [value(1, "USED_IN", "hub", hub)]} for p in parts),
    )
    down = await traced(node, hub)
    assert len(down["nodes"]) == 1000 and len(down["edges"]) == 999 + 999
    assert down["truncated"] is True
    up = await traced(node, hub, direction="up", limit="50")
    assert len(up["nodes"]) == 50 and up["truncated"] is True
    whole = await traced(node, hub, limit="2001", depth="1")
    assert len(whole["nodes"]) == 2001 and len(whole["edges"]) == 2000
    assert whole["truncated"] is False


async def test_missing_and_foreign_targets(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    other = await tenant()  # homed here too: its handles are resolved, not foreign
    await put(node, other, other.handle("REAL"), value(1, "PART", "real"))
    targets = [t.handle("GONE"), "99.9/ELSEWHERE", other.handle("REAL"), other.handle("NOPE")]
    await put(node, t, t.handle("KIT"), value(1, "PARTS", "kit", *targets))
    body = await traced(node, t.handle("KIT"), depth="5")
    assert statuses(body) == {
        t.handle("KIT"): ("found", 0),
        t.handle("GONE"): ("not-found", 1),
        "99.9/ELSEWHERE": ("foreign", 1),
        other.handle("REAL"): ("found", 1),
        other.handle("NOPE"): ("not-found", 1),
    }
    # a handle referenced but never registered can still be traced up... once it exists
    status, answer = await trace(node, t.handle("GONE"), direction="up")
    assert status == 404 and answer["responseCode"] == 100
    await put(node, t, t.handle("GONE"), value(1, "PART", "back"))
    assert edges(await traced(node, t.handle("GONE"), direction="up")) == {
        (t.handle("KIT"), t.handle("GONE"))
    }


async def test_private_values_are_neither_shown_nor_followed(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    secret, open_ = t.handle("SECRET-SUPPLIER"), t.handle("PART")
    await put(node, t, secret, value(1, "NAME", "hidden"))
    await put(node, t, open_, value(1, "NAME", "part"))
    await put(
        node,
        t,
        t.handle("KIT"),
        value(1, "PART", "part", open_),
        value(2, "SUPPLIER", "confidential", secret, permissions="1100"),
    )
    down = await traced(node, t.handle("KIT"))
    assert set(statuses(down)) == {t.handle("KIT"), open_}
    kit = down["nodes"][0]
    assert [v["index"] for v in kit["values"]] == [1, 100]  # 100: the default HS_ADMIN
    assert "confidential" not in orjson.dumps(down).decode()
    up = await traced(node, secret, direction="up")
    assert len(up["nodes"]) == 1 and up["edges"] == []


async def test_vlist_values_are_references(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    group = {"format": "vlist", "value": [ref(t.handle("M1"), 300), ref(t.handle("M2"), 300)]}
    await put(node, t, t.handle("GROUP"), {"index": 1, "type": "HS_VLIST", "data": group})
    body = await traced(node, t.handle("GROUP"))
    assert {(e["to"], e["toIndex"], e["via"]["type"]) for e in body["edges"]} == {
        (t.handle("M1"), 300, "HS_VLIST"),
        (t.handle("M2"), 300, "HS_VLIST"),
    }


async def referrers(store: Store, handle: str) -> set[tuple[str, int]]:
    """The (referencing suffix, value index) rows of the reverse index for ``handle``."""
    prefix, _, suffix = handle.lower().partition("/")
    rows = await store.pool.fetch(
        "SELECT from_suffix_key, idx FROM handle_refs WHERE to_prefix_key = $1"
        " AND to_suffix_key = $2",
        prefix,
        suffix,
    )
    return {(r["from_suffix_key"], r["idx"]) for r in rows}


async def test_the_index_follows_single_writes(
    node: RunningNode, tenant: TenantFactory, store: Store
) -> None:
    t = await tenant()
    lot, kit = t.handle("LOT"), t.handle("KIT")
    await put(node, t, kit, value(1, "LOT", "lot", lot), value(2, "LOT2", "lot", lot))
    assert await referrers(store, lot) == {("kit", 1), ("kit", 2)}
    await put(node, t, kit, value(1, "LOT", "none"))  # replaced without references
    assert await referrers(store, lot) == set()
    async with node.session.put(
        node.api(kit), params={"index": "3"}, json=[value(3, "LOT", "lot", lot)], headers=t.auth
    ) as r:
        assert r.status == 200, await r.text()
    assert await referrers(store, lot) == {("kit", 3)}
    async with node.session.delete(node.api(kit), params={"index": "3"}, headers=t.auth) as r:
        assert r.status == 200
    assert await referrers(store, lot) == set()
    await put(node, t, kit, value(1, "LOT", "lot", lot))
    async with node.session.delete(node.api(kit), headers=t.auth) as r:
        assert r.status == 200
    assert await referrers(store, lot) == set()


async def test_the_index_follows_batches(
    node: RunningNode, tenant: TenantFactory, store: Store
) -> None:
    t = await tenant()
    lot = t.handle("LOT")
    kits = [t.handle(f"KIT{i}") for i in range(3)]
    await put(node, t, lot, value(1, "LOT", "steel"))
    await batch(node, t, *({"handle": k, "values": [value(1, "LOT", "l", lot)]} for k in kits))
    assert await referrers(store, lot) == {("kit0", 1), ("kit1", 1), ("kit2", 1)}
    await batch(
        node,
        t,
        {"op": "replace", "handle": kits[0], "values": [value(1, "LOT", "none")]},
        {"op": "put-values", "handle": kits[1], "values": [value(2, "LOT", "l", lot)]},
        {"op": "delete", "handle": kits[2]},
        mode="each",
    )
    assert await referrers(store, lot) == {("kit1", 1), ("kit1", 2)}
    up = await traced(node, lot.lower(), direction="up")
    assert [n["handle"] for n in up["nodes"][1:]] == [kits[1]]


# --- bad input -----------------------------------------------------------------------------


async def test_bad_parameters(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    await put(node, t, t.handle("X"), value(1, "PART", "x"))
    cases: list[tuple[str, dict[str, str], int, int, str]] = [
        (t.handle("X"), {"direction": "sideways"}, 400, 4, "direction must be down or up"),
        (t.handle("X"), {"depth": "-1"}, 400, 4, "depth must be an integer from 0 to 10"),
        (t.handle("X"), {"depth": "11"}, 400, 4, "depth must be an integer from 0 to 10"),
        (t.handle("X"), {"depth": "1e9"}, 400, 4, "depth"),
        (t.handle("X"), {"limit": "0"}, 400, 4, "limit must be an integer from 1 to 10000"),
        (t.handle("X"), {"limit": "99999999999999999999999"}, 400, 4, "limit"),
        ("no-slash", {}, 400, 102, "no '/'"),
        ("%ff%fe/x", {}, 400, 102, "not valid UTF-8"),
        (t.handle("NOBODY"), {}, 404, 100, "Handle not found"),
        ("99.5/ELSEWHERE", {}, 400, 301, "not homed"),
    ]
    for handle, params, status, code, message in cases:
        got, body = await trace(node, handle, **params)
        assert (got, body["responseCode"]) == (status, code), (handle, params, body)
        assert message in body["message"], body
        assert "handle" in body


async def test_answers_match_the_openapi_document(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    h = await vehicle(node, t)
    path = "/api/trace/{handle}"
    for direction in ("down", "up"):
        async with node.session.get(
            f"{node.url}/api/trace/{h['ENG-1']}", params={"direction": direction}
        ) as r:
            body = await check_answer(r, path, "get", 200)
        assert len(body["nodes"]) > 1
    async with node.session.get(f"{node.url}/api/trace/{t.handle('NONE')}") as r:
        await check_answer(r, path, "get", 404)
    async with node.session.get(f"{node.url}/api/trace/{h['ENG-1']}?depth=x") as r:
        await check_answer(r, path, "get", 400)


EXAMPLE = ROOT / "schemas" / "examples" / "vehicle" / "vehicle.ndjson"


async def test_the_vehicle_example_imports_and_traces(
    node: RunningNode,
    tenant: TenantFactory,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
) -> None:
    """The README's walk-through, on the shipped data set under fresh prefixes."""
    maker, cells, steel = await tenant(), await tenant(), await tenant()
    text = EXAMPLE.read_text()
    for old, t in (("88.118.8/", maker), ("88.118.9/", cells), ("88.118.12/", steel)):
        text = text.replace(old, f"{t.prefix}/")
    copy = tmp_path / "vehicle.ndjson"
    copy.write_text(text)
    done = cli("import", str(copy))
    assert done.returncode == 0, done.stderr
    vin = maker.handle("LSVAU2180N2183201")
    down = await traced(node, vin, depth="4")
    found = {n["handle"]: n["status"] for n in down["nodes"]}
    assert len(found) == 15 and not down["truncated"]  # 1 + 4 parts + 4 batches + 4 lots + 2 heats
    assert found[steel.handle("COIL-DC04-260211-07")] == "found"
    assert found["88.120.3/HEAT-B26-04417"] == "foreign"
    assert found["88.131.5/NMC811-LOT-2601-22"] == "foreign"
    assert "DEALER_PRICE_CNY" not in orjson.dumps(down).decode()  # a private value
    up = await traced(node, maker.handle("BATCH-EA211-20260302"), direction="up")
    assert {(n["handle"], n["depth"]) for n in up["nodes"][1:]} == {
        (maker.handle("ENG-EA211-0045821"), 1),
        (maker.handle("ENG-EA211-0045822"), 1),
        (vin, 2),
        (maker.handle("LSVAU2180N2183202"), 2),
    }
