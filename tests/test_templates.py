"""Per-prefix data templates: the shipped examples, checking templates and records, the
HTTP API with its versions and permissions, records that predate a template, and the
``idnode template`` commands (real node, real database, real subprocess)."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from registry import values as hv
from registry.errors import InvalidTemplate
from registry.templates import DRAFT, MAX_MESSAGE, compile_template
from resolver.config import Config
from tests.conftest import URL_VALUE, RunningNode, Tenant, TenantFactory
from tests.test_openapi import check_answer

Cli = Callable[..., subprocess.CompletedProcess[str]]
EXAMPLES = Path(__file__).resolve().parent.parent / "schemas" / "templates"
TEMPLATES = "/api/templates/{prefix}"
HANDLES = "/api/handles/{handle}"

# A realistic record of each example, a bad one, and the rule each bad field breaks.
RECORDS: dict[str, tuple[dict[str, str], dict[str, str], dict[str, str]]] = {
    "auto-parts": (
        {
            "partNumber": "8450-A1201",
            "partName": "前制动盘",
            "supplierCode": "SUP0371",
            "batchNumber": "B20240315-02",
            "productionDate": "2024-03-15",
            "vehicleModel": "SVW7142,SVW7152",
            "vin": "LSVAU033512345678",
            "quantity": "200",
        },
        {
            "partNumber": "AB_1",
            "supplierCode": "S-1",
            "productionDate": "2024-02-30",
            "vin": "LSVAU0335I2345678",
            "quantity": "0",
        },
        {
            "partNumber": "pattern",
            "supplierCode": "pattern",
            "batchNumber": "required",
            "productionDate": "format",
            "vin": "pattern",
            "quantity": "minimum",
        },
    ),
    "pharmaceuticals": (
        {
            "traceabilityCode": "81234567890123456789",
            "approvalNumber": "国药准字H20003263",
            "genericName": "阿莫西林胶囊",
            "dosageForm": "胶囊剂",
            "packageSpec": "0.25g×24粒/盒",
            "batchNumber": "240315A",
            "productionDate": "2024-03-15",
            "expiryDate": "2026-02-28",
            "holder": "某某制药有限公司",
            "url": "https://example.com/drug/81234567890123456789",
        },
        {
            "traceabilityCode": "8123",
            "approvalNumber": "国药准字X20003263",
            "genericName": "阿莫西林胶囊",
            "dosageForm": "药丸",
            "batchNumber": "240315A",
            "productionDate": "2024-03-15",
        },
        {
            "traceabilityCode": "pattern",
            "approvalNumber": "pattern",
            "dosageForm": "enum",
            "expiryDate": "required",
        },
    ),
    "steel-coils": (
        {
            "coilNumber": "C24031500123",
            "heatNumber": "H4A21873",
            "grade": "Q235B",
            "standard": "GB/T 3274-2017",
            "thicknessMm": "3.75",
            "widthMm": "1250",
            "weightKg": "21850",
            "surface": "hot-rolled",
            "productionDate": "2024-03-15",
            "certificateNumber": "QC-2024-031501",
        },
        {
            "coilNumber": "C24031500123",
            "heatNumber": "H4A21873",
            "grade": "q235b",
            "thicknessMm": "30",
            "widthMm": "wide",
            "weightKg": "21850.5",
        },
        {
            "grade": "pattern",
            "standard": "required",
            "thicknessMm": "maximum",
            "widthMm": "type",
            "weightKg": "type",
        },
    ),
    "electronics-components": (
        {
            "mpn": "STM32F103C8T6",
            "manufacturer": "STMicroelectronics",
            "package": "LQFP-48",
            "lotCode": "GH2390A1",
            "dateCode": "2412",
            "rohs": "compliant",
            "msl": "3",
            "quantity": "2500",
            "countryOfOrigin": "CN",
        },
        {
            "manufacturer": "STMicroelectronics",
            "lotCode": "GH2390A1",
            "dateCode": "2460",
            "rohs": "yes",
            "msl": "7",
            "quantity": "-5",
        },
        {
            "mpn": "required",
            "dateCode": "pattern",
            "rohs": "enum",
            "msl": "enum",
            "quantity": "minimum",
        },
    ),
}


def example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads((EXAMPLES / f"{name}.json").read_bytes())
    return loaded


def values_for(template: dict[str, Any], fields: dict[str, str]) -> list[dict[str, Any]]:
    """The Handle values that carry ``fields`` under ``template`` (its index, or 10, 11, ...)."""
    out = []
    for n, (name, data) in enumerate(fields.items()):
        binding = template["properties"][name]["x-handle"]
        out.append({"index": binding.get("index", 10 + n), "type": binding["type"], "data": data})
    return out


def parsed(raw: list[dict[str, Any]]) -> list[hv.Value]:
    return [hv.parse_value(v, timestamp="2024-01-01T00:00:00Z") for v in raw]


def by_field(errors: list[dict[str, str]]) -> dict[str, str]:
    fields = [e["field"] for e in errors]
    assert len(fields) == len(set(fields)), f"one error per field: {errors}"
    return {e["field"]: e["rule"] for e in errors}


PARTS: dict[str, Any] = {
    "$schema": DRAFT,
    "title": "parts",
    "type": "object",
    "properties": {
        "partNumber": {
            "type": "string",
            "minLength": 3,
            "maxLength": 12,
            "pattern": "^[A-Z0-9-]+$",
            "x-handle": {"type": "PART_NUMBER", "index": 2},
        },
        "quantity": {"type": "integer", "minimum": 1, "x-handle": {"type": "QUANTITY"}},
        "rohs": {"enum": ["yes", "no"], "x-handle": {"type": "ROHS"}},
        "fragile": {"type": "boolean", "x-handle": {"type": "FRAGILE"}},
    },
    "required": ["partNumber", "quantity"],
    "additionalProperties": False,
}
GOOD_PART = [
    {"index": 2, "type": "PART_NUMBER", "data": "AB-12"},
    {"index": 3, "type": "QUANTITY", "data": "40"},
    {"index": 4, "type": "fragile", "data": "true"},
]


# --- the examples and the checks, without a database -----------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_example_templates_accept_real_records_and_reject_bad_ones(name: str) -> None:
    template = example(name)
    compiled = compile_template(template, prefix="88.118.8", version=1)
    good, bad, expected = RECORDS[name]
    assert compiled.violations(parsed(values_for(template, good))) == []
    raw = values_for(template, bad)
    if template.get("additionalProperties") is False:
        raw.append({"index": 99, "type": "COLOR", "data": "red"})
        expected = {**expected, "COLOR": "additionalProperties"}
    errors = compiled.violations(parsed(raw))
    assert by_field(errors) == expected
    assert all(e["message"] for e in errors)


def test_every_shipped_template_is_tested() -> None:
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(RECORDS)
    assert (EXAMPLES / "README.md").exists()


def test_one_error_per_field_with_the_keyword_that_failed() -> None:
    t = compile_template(PARTS, prefix="88.118.8", version=3)
    assert t.violations(parsed(GOOD_PART)) == []
    # HS_* system values are always allowed, whatever additionalProperties says
    reference = {"handle": "0.NA/88.118.8", "index": 300}
    admin = {"index": 100, "type": "HS_ADMIN", "data": {"format": "admin", "value": reference}}
    assert t.violations(parsed([*GOOD_PART, admin])) == []

    bad = [
        {"index": 2, "type": "part_number", "data": "ab_12345678901"},  # 3 rules broken
        {"index": 3, "type": "QUANTITY", "data": "0"},
        {"index": 4, "type": "ROHS", "data": "maybe"},
        {"index": 5, "type": "FRAGILE", "data": "True"},
        {"index": 6, "type": "URL", "data": "https://example.com"},
        {"index": 7, "type": "URL", "data": "https://example.com/2"},
    ]
    errors = t.violations(parsed(bad))
    assert by_field(errors) == {
        "partNumber": errors[0]["rule"],
        "quantity": "minimum",
        "rohs": "enum",
        "fragile": "type",
        "URL": "additionalProperties",
    }
    assert errors[0]["rule"] in {"maxLength", "pattern"}
    assert "value 2" in errors[0]["message"] and "partNumber" in errors[0]["message"]

    # the index is part of the binding; the lowest index wins where none is given
    moved = [{**GOOD_PART[0], "index": 20}, *GOOD_PART[1:]]
    assert by_field(t.violations(parsed(moved))) == {"partNumber": "required"}
    two = [*GOOD_PART, {"index": 1, "type": "QUANTITY", "data": "x"}]
    assert by_field(t.violations(parsed(two))) == {"quantity": "type"}


def test_values_are_read_as_text_and_converted_only_when_asked() -> None:
    t = compile_template(
        {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[0-9]+$", "x-handle": {"type": "CODE"}},
                "ratio": {"type": "number", "maximum": 1, "x-handle": {"type": "RATIO"}},
                "count": {"type": "integer", "x-handle": {"type": "COUNT"}},
            },
        }
    )
    ok = [
        {"index": 1, "type": "CODE", "data": "007"},
        {"index": 2, "type": "RATIO", "data": "0.5"},
        {"index": 3, "type": "COUNT", "data": "-12"},
    ]
    assert t.violations(parsed(ok)) == []
    wrong = [
        {"index": 1, "type": "CODE", "data": "7a"},
        {"index": 2, "type": "RATIO", "data": "1e3"},
        {"index": 3, "type": "COUNT", "data": "1.5"},
    ]
    assert by_field(t.violations(parsed(wrong))) == {
        "code": "pattern",
        "ratio": "maximum",
        "count": "type",
    }
    for text in ("NaN", "inf", "1_000", " 1", "0x10", "9" * 5000):
        raw = [{"index": 3, "type": "COUNT", "data": text}]
        assert by_field(t.violations(parsed(raw))) == {"count": "type"}, text


def test_a_long_value_gets_a_short_message_and_patterns_cannot_backtrack() -> None:
    t = compile_template(
        {
            "type": "object",
            "properties": {
                "name": {"maxLength": 10, "x-handle": {"type": "NAME"}},
                "word": {"pattern": "^(a+)+$", "x-handle": {"type": "WORD"}},
            },
        }
    )
    started = time.perf_counter()
    errors = t.violations(
        parsed(
            [
                {"index": 1, "type": "NAME", "data": "x" * 60000},
                {"index": 2, "type": "WORD", "data": "a" * 60000 + "!"},
            ]
        )
    )
    assert time.perf_counter() - started < 1.0
    assert by_field(errors) == {"name": "maxLength", "word": "pattern"}
    assert all(len(e["message"]) <= MAX_MESSAGE for e in errors)


@pytest.mark.parametrize(
    ("template", "field", "rule"),
    [
        ([], "/", "type"),
        ({"type": "objekt"}, "/type", "type"),
        ({"properties": {"a": {"maxLength": -1, "x-handle": {"type": "A"}}}}, None, "maxLength"),
        ({"properties": {"a": {"pattern": "((", "x-handle": {"type": "A"}}}}, None, "pattern"),
        ({"properties": {"a": {"pattern": "(?=a)", "x-handle": {"type": "A"}}}}, None, "pattern"),
        (  # compiles to more than MAX_REGEX_BYTES
            {
                "properties": {
                    "a": {"pattern": r"^(\w{1,50}\d{1,50}){1,20}$", "x-handle": {"type": "A"}}
                }
            },
            "/properties/a/pattern",
            "pattern",
        ),
        ({"properties": {"a": {"format": "nosuch", "x-handle": {"type": "A"}}}}, None, "format"),
        (
            {"properties": {"a": {"$ref": "https://example.com/s", "x-handle": {"type": "A"}}}},
            "/",
            None,
        ),
        ({"properties": {"a": {"type": "string"}}}, "/properties/a/x-handle", "x-handle"),
        ({"properties": {"a": {"x-handle": {"type": "A", "index": 0}}}}, None, "x-handle"),
        ({"properties": {"a": {"x-handle": {"type": ""}}}}, None, "x-handle"),
        ({"properties": {"a": True}}, "/properties/a", "properties"),
        ({"properties": {}, "required": ["b"]}, "/required/0", "required"),
        ({"$schema": "http://json-schema.org/draft-07/schema#"}, "/$schema", "$schema"),
        ({"type": "array"}, "/type", "type"),
        ({"additionalProperties": {"type": "string"}}, "/additionalProperties", None),
        ({"$ref": "#/$defs/x", "$defs": {"x": {}}}, "/$ref", "structure"),
        ({"allOf": [{}]}, "/allOf", "structure"),
        (
            {
                "properties": {
                    "a": {"x-handle": {"type": "NAME"}},
                    "b": {"x-handle": {"type": "name"}},
                }
            },
            "/properties/b/x-handle",
            "x-handle",
        ),
    ],
)
def test_templates_that_are_not_templates_are_refused(
    template: Any, field: str | None, rule: str | None
) -> None:
    with pytest.raises(InvalidTemplate) as caught:
        compile_template(template)
    details = caught.value.details
    assert details and all(set(d) == {"field", "rule", "message"} for d in details)
    if field is not None:
        assert details[0]["field"] == field, details
    if rule is not None:
        assert details[0]["rule"] == rule, details


def test_every_problem_of_a_template_is_listed() -> None:
    with pytest.raises(InvalidTemplate) as caught:
        compile_template(
            {
                "properties": {
                    "a": {"maxLength": -1, "x-handle": {"type": "A"}},
                    "b": {"minimum": "x", "x-handle": {"type": "B"}},
                },
                "type": "objekt",
            }
        )
    fields = {d["field"] for d in caught.value.details or []}
    assert fields == {"/properties/a/maxLength", "/properties/b/minimum", "/type"}


def test_a_template_may_use_local_definitions_and_odd_property_names() -> None:
    t = compile_template(
        {
            "$defs": {"code": {"type": "integer", "maximum": 9}},
            "type": "object",
            "properties": {
                "a/b~c": {"$ref": "#/$defs/code", "x-handle": {"type": "CODE"}},
                "零件号": {"pattern": "^P", "x-handle": {"type": "PN"}},
            },
            "required": ["a/b~c"],
        }
    )
    assert t.violations(parsed([{"index": 1, "type": "CODE", "data": "7"}])) == []
    bad = [{"index": 1, "type": "CODE", "data": "70"}, {"index": 2, "type": "PN", "data": "Q"}]
    assert by_field(t.violations(parsed(bad))) == {"a/b~c": "maximum", "零件号": "pattern"}


# --- HTTP -----------------------------------------------------------------------------------


def template_url(node: RunningNode, prefix: str) -> str:
    return f"{node.url}/api/templates/{prefix}"


async def set_template(node: RunningNode, t: Tenant, template: Any) -> int:
    async with node.session.put(template_url(node, t.prefix), json=template, headers=t.auth) as r:
        body = await check_answer(r, TEMPLATES, "put", 201)
    assert body["prefix"] == t.prefix
    version: int = body["version"]
    return version


async def test_a_write_that_breaks_several_fields_gets_one_error_per_field(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    assert await set_template(node, t, PARTS) == 1
    url = node.api(t.handle("part-1"))
    bad = [
        {"index": 2, "type": "PART_NUMBER", "data": "x"},
        {"index": 3, "type": "QUANTITY", "data": "none"},
        {"index": 4, "type": "ROHS", "data": "maybe"},
        {"index": 5, "type": "EMAIL", "data": "ops@example.com"},
    ]
    async with node.session.put(url, json=bad, headers=t.auth) as r:
        assert r.status == 400
        body = await r.json()
    assert body["responseCode"] == 202 and body["handle"] == t.handle("part-1")
    assert by_field(body["errors"]) == {
        "partNumber": body["errors"][0]["rule"],
        "quantity": "type",
        "rohs": "enum",
        "EMAIL": "additionalProperties",
    }
    assert body["errors"][0]["rule"] in {"minLength", "pattern"}
    assert "partNumber" in body["message"]
    async with node.session.get(url) as r:
        assert r.status == 404  # nothing was written

    async with node.session.put(url, json=GOOD_PART, headers=t.auth) as r:
        assert r.status == 201, await r.text()
    # changing some values: the record as it would become is checked
    async with node.session.put(
        url,
        json=[{"index": 3, "type": "QUANTITY", "data": "-1"}],
        headers=t.auth,
        params={"index": "3"},
    ) as r:
        assert r.status == 400
        assert by_field((await r.json())["errors"]) == {"quantity": "minimum"}
    # removing a required value is a write too
    async with node.session.delete(url, headers=t.auth, params={"index": "3"}) as r:
        assert r.status == 400
        assert by_field((await r.json())["errors"]) == {"quantity": "required"}
    async with node.session.put(
        url,
        json=[{"index": 3, "type": "QUANTITY", "data": "41"}],
        headers=t.auth,
        params={"index": "3"},
    ) as r:
        assert r.status == 200, await r.text()
    # minted handles are checked as well
    async with node.session.put(
        node.api(t.prefix), json=bad, headers=t.auth, params={"mintNewSuffix": "true"}
    ) as r:
        assert r.status == 400
    # another prefix is not bound by this template
    other = await tenant()
    async with node.session.put(node.api(other.handle("free")), json=bad, headers=other.auth) as r:
        assert r.status == 201


async def test_versions_history_and_removal(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    url = template_url(node, t.prefix)
    async with node.session.get(url) as r:
        body = await check_answer(r, TEMPLATES, "get", 404)
    assert body["responseCode"] == 100 and body["handle"] == t.prefix

    assert await set_template(node, t, PARTS) == 1
    looser = {**PARTS, "required": ["partNumber"], "title": "parts v2"}
    assert await set_template(node, t, looser) == 2
    async with node.session.get(url) as r:
        body = await check_answer(r, TEMPLATES, "get", 200)
    assert (body["version"], body["template"], body["prefix"]) == (2, looser, t.prefix)
    assert list(body["template"]) == list(looser)  # stored as written, keys in order
    async with node.session.get(url, params={"version": "1"}) as r:
        assert (await check_answer(r, TEMPLATES, "get", 200))["template"] == PARTS
    for missing in ("3", "2147483647"):
        async with node.session.get(url, params={"version": missing}) as r:
            await check_answer(r, TEMPLATES, "get", 404)
    for bad in ("0", "-1", "x", "2147483648", "9" * 40):
        async with node.session.get(url, params={"version": bad}) as r:
            assert (await check_answer(r, TEMPLATES, "get", 400))["responseCode"] == 4
    async with node.session.head(url) as r:
        assert r.status == 200

    handle = node.api(t.handle("loose"))
    only_part = [GOOD_PART[0]]
    async with node.session.put(handle, json=only_part, headers=t.auth) as r:
        assert r.status == 201, await r.text()  # v2 needs no quantity

    async with node.session.delete(url, headers=t.auth) as r:
        body = await check_answer(r, TEMPLATES, "delete", 200)
    assert body == {"responseCode": 1, "prefix": t.prefix, "version": 3}
    async with node.session.get(url) as r:
        assert "removed" in (await check_answer(r, TEMPLATES, "get", 404))["message"]
    async with node.session.get(url, params={"version": "3"}) as r:
        await check_answer(r, TEMPLATES, "get", 404)
    async with node.session.delete(url, headers=t.auth) as r:
        await check_answer(r, TEMPLATES, "delete", 404)
    # lifted: anything goes again
    async with node.session.put(handle, json=[URL_VALUE], headers=t.auth) as r:
        assert r.status == 200, await r.text()
    assert await set_template(node, t, PARTS) == 4


async def test_only_the_prefix_admin_sets_templates(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t, other = await tenant(), await tenant()
    url = template_url(node, t.prefix)
    async with node.session.put(url, json=PARTS) as r:
        body = await check_answer(r, TEMPLATES, "put", 401)
    assert body["responseCode"] == 402
    async with node.session.put(url, json=PARTS, headers=other.auth) as r:
        assert (await check_answer(r, TEMPLATES, "put", 403))["responseCode"] == 400
    async with node.session.delete(url) as r:
        await check_answer(r, TEMPLATES, "delete", 401)
    async with node.session.delete(url, headers=other.auth) as r:
        await check_answer(r, TEMPLATES, "delete", 403)
    wrong = Tenant(t.prefix, "not-the-secret")
    async with node.session.put(url, json=PARTS, headers=wrong.auth) as r:
        await check_answer(r, TEMPLATES, "put", 401)
    async with node.session.get(url) as r:
        await check_answer(r, TEMPLATES, "get", 404)  # nothing was stored

    for method in ("get", "put", "delete"):
        async with node.session.request(
            method, template_url(node, "99.404.1"), json=PARTS, headers=t.auth
        ) as r:
            assert (await check_answer(r, TEMPLATES, method, 400))["responseCode"] == 301
        async with node.session.request(
            method, template_url(node, "88..1"), json=PARTS, headers=t.auth
        ) as r:
            assert (await check_answer(r, TEMPLATES, method, 400))["responseCode"] == 102


async def test_invalid_templates_and_bodies_are_4xx_json(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    url = template_url(node, t.prefix)
    not_schema = {
        "type": "objekt",
        "properties": {"a": {"maxLength": -1, "x-handle": {"type": "A"}}},
    }
    not_template = {"properties": {"a": {"type": "string"}}, "required": ["b"], "allOf": [{}]}
    json_headers = {**t.auth, "Content-Type": "application/json"}
    for template, count in ((not_schema, 2), (not_template, 3), ([], 1), ("x", 1), (None, 1)):
        sent = orjson.dumps(template)
        async with node.session.put(url, data=sent, headers=json_headers) as r:
            body = await check_answer(r, TEMPLATES, "put", 400)
        assert body["responseCode"] == 4 and len(body["errors"]) == count, body
        assert all(set(e) == {"field", "rule", "message"} for e in body["errors"])

    headers = {**t.auth, "Content-Type": "application/json"}
    too_big = b'{"pad": "' + b"x" * (Config().max_body_bytes + 1) + b'"}'
    cases: list[tuple[bytes, dict[str, str], int]] = [
        (b"{not json", headers, 400),
        (b"[" * 5000 + b"]" * 5000, headers, 400),
        (  # JSON the parser takes, nested deeper than the schema compiler goes
            b'{"properties": {"a": {"x-handle": {"type": "A"}, '
            + b'"items": {' * 600
            + b"}" * 600
            + b"}}}",
            headers,
            400,
        ),
        (b'{"a": 1}', {**t.auth, "Content-Type": "text/plain"}, 415),
        (too_big, headers, 413),
        (
            orjson.dumps(
                {"properties": {f"p{i}": {"x-handle": {"type": f"T{i}"}} for i in range(3000)}}
            ),
            headers,
            400,
        ),
        (
            orjson.dumps({"properties": {"a": {"pattern": "(?<=x)", "x-handle": {"type": "A"}}}}),
            headers,
            400,
        ),
        (
            orjson.dumps(
                {"properties": {"a": {"$ref": "http://127.0.0.1:1/x", "x-handle": {"type": "A"}}}}
            ),
            headers,
            400,
        ),
    ]
    for data, sent_headers, status in cases:
        async with node.session.put(url, data=io.BytesIO(data), headers=sent_headers) as r:
            body = await check_answer(r, TEMPLATES, "put", status)
        assert body["responseCode"] == 4
    async with node.session.get(url) as r:
        await check_answer(r, TEMPLATES, "get", 404)  # none of it was stored


# --- records that predate a template, and the commands --------------------------------------


async def test_existing_records_keep_resolving_and_the_next_write_must_comply(
    node: RunningNode, tenant: TenantFactory, cli: Cli, tmp_path: Path
) -> None:
    t = await tenant()
    steel = example("steel-coils")
    good, bad, _ = RECORDS["steel-coils"]
    for suffix, fields in (("coil-ok", good), ("coil-old", bad)):
        async with node.session.put(
            node.api(t.handle(suffix)), json=values_for(steel, fields), headers=t.auth
        ) as r:
            assert r.status == 201, await r.text()

    set_ = cli("template", "set", t.prefix, str(EXAMPLES / "steel-coils.json"))
    assert set_.returncode == 0, set_.stderr
    assert "version 1" in set_.stdout

    async with node.session.get(node.api(t.handle("coil-old"))) as r:
        assert r.status == 200  # kept, and resolving
    # the node's own cache of templates picks up the version the command stored
    async with node.session.put(
        node.api(t.handle("coil-old")), json=values_for(steel, bad), headers=t.auth
    ) as r:
        assert r.status == 400
        assert set(by_field((await r.json())["errors"])) == set(RECORDS["steel-coils"][2])

    check = cli("template", "check", t.prefix)
    assert check.returncode == 1, check.stderr
    assert "Traceback" not in check.stderr
    assert t.handle("coil-old") in check.stdout.splitlines()
    assert t.handle("coil-ok") not in check.stdout
    assert "grade: pattern:" in check.stdout and "standard: required:" in check.stdout
    assert "1 record(s)" in check.stderr

    async with node.session.put(
        node.api(t.handle("coil-old")), json=values_for(steel, good), headers=t.auth
    ) as r:
        assert r.status == 200, await r.text()
    check = cli("template", "check", t.prefix)
    assert check.returncode == 0, check.stdout
    assert "every record" in check.stdout

    shown = cli("template", "show", t.prefix)
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout) == steel
    assert "version 1" in shown.stderr and "by cli" in shown.stderr

    removed = cli("template", "remove", t.prefix)
    assert removed.returncode == 0, removed.stderr
    assert cli("template", "show", t.prefix).returncode == 1
    again = cli("template", "show", t.prefix, "--version", "1")
    assert again.returncode == 0 and orjson.loads(again.stdout) == steel
    assert cli("template", "check", t.prefix).returncode == 0


async def test_template_commands_refuse_bad_input_clearly(
    tenant: TenantFactory, cli: Cli, tmp_path: Path
) -> None:
    t = await tenant()
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "objekt", "properties": {"a": {"type": "string"}}}')
    result = cli("template", "set", t.prefix, str(bad))
    assert result.returncode == 1
    assert "not a valid template" in result.stderr and "/type" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout

    for content in ("{not json", "null", "[]"):
        bad.write_text(content)
        result = cli("template", "set", t.prefix, str(bad))
        assert result.returncode == 1 and result.stderr.startswith("idnode: "), result.stderr
        assert "Traceback" not in result.stderr
    result = cli("template", "set", t.prefix, str(tmp_path / "missing.json"))
    assert result.returncode == 1 and "cannot read" in result.stderr

    good = str(EXAMPLES / "auto-parts.json")
    result = cli("template", "set", "99.404.2", good)
    assert result.returncode == 1 and "not homed" in result.stderr
    result = cli("template", "set", "88..1", good)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert cli("template", "remove", t.prefix).returncode == 1  # nothing to remove
    assert cli("template", "check", t.prefix).returncode == 0  # no template: nothing violates
    assert cli("template", "show", t.prefix, "--version", "0").returncode == 2  # argparse

    assert cli("template", "set", t.prefix, good).returncode == 0
    assert cli("template", "set", t.prefix, good).stdout.count("version 2") == 1
