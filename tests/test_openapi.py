"""schemas/openapi.yaml: a valid OpenAPI 3.1 document, in step with the app's routes, the
error classes' status mapping, and the answers a running node really gives."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from registry.errors import ClientError, InternalError
from resolver.app import create_app
from resolver.config import Config
from tests.conftest import RunningNode, TenantFactory

SPEC_PATH = Path(__file__).resolve().parent.parent / "schemas" / "openapi.yaml"
BASE = "urn:idnode:openapi"
HTTP_METHODS = ("get", "head", "put", "post", "delete", "patch", "options", "trace")
WRITES = ("put", "delete")
URL_VALUE = {"index": 1, "type": "URL", "data": {"format": "string", "value": "https://e.com/1"}}
EMAIL_VALUE = {"index": 2, "type": "EMAIL", "data": "ops@example.com"}


@cache
def spec() -> Any:
    with SPEC_PATH.open() as f:
        return yaml.safe_load(f)


@cache
def registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(spec(), DRAFT202012)
    return Registry().with_resource(BASE, resource)


def pointer(ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node: Any = spec()
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(obj: Any) -> Any:
    while isinstance(obj, dict) and "$ref" in obj:
        obj = pointer(obj["$ref"])
    return obj


def absolute(schema: Any) -> Any:
    """A copy whose local ``$ref``s point into the registered document."""
    if isinstance(schema, dict):
        return {
            k: BASE + v if k == "$ref" and v.startswith("#") else absolute(v)
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [absolute(v) for v in schema]
    return schema


def validator(schema: Any) -> OAS31Validator:
    return OAS31Validator(absolute(copy.deepcopy(schema)), registry=registry())


def required_keys(schema: Any, body: Any) -> set[str]:
    """The keys ``schema`` requires of ``body``: its own, its allOf members', and those of
    the one oneOf/anyOf branch that ``body`` matches."""
    schema = deref(schema)
    keys = set(schema.get("required", []))
    for sub in schema.get("allOf", []):
        keys |= required_keys(sub, body)
    for combinator in ("oneOf", "anyOf"):
        if combinator in schema:
            matching = [s for s in schema[combinator] if validator(s).is_valid(body)]
            assert len(matching) == 1, f"{body!r} matches {len(matching)} branches of {combinator}"
            keys |= required_keys(matching[0], body)
    return keys


def operation(path: str, method: str) -> Any:
    return spec()["paths"][path][method]


def documented_response(path: str, method: str, status: int) -> Any:
    responses = operation(path, method)["responses"]
    assert str(status) in responses, f"{method.upper()} {path} does not document {status}"
    return deref(responses[str(status)])


def operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec()["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


async def check_answer(
    response: aiohttp.ClientResponse, path: str, method: str, status: int
) -> Any:
    """Assert the real answer is documented: status, required headers, body schema, and
    exactly the required keys of its schema."""
    assert response.status == status, await response.text()
    documented = documented_response(path, method, status)
    for name, header in (documented.get("headers") or {}).items():
        header = deref(header)
        if header.get("required"):
            assert name in response.headers, f"{name} missing on {status}"
        if name in response.headers:
            assert validator(header["schema"]).is_valid(response.headers[name]), (
                name,
                response.headers[name],
            )
    assert response.content_type in documented["content"]
    schema = documented["content"][response.content_type]["schema"]
    body = await response.json()
    errors = sorted(validator(schema).iter_errors(body), key=str)
    assert not errors, [e.message for e in errors]
    assert set(body) == required_keys(schema, body)
    return body


# --- the document itself --------------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    assert spec()["openapi"].startswith("3.1.")
    validate(spec())


def app_routes() -> set[tuple[str, str, str | None]]:
    app = create_app(Config(), "postgresql://unused")
    return {
        (r.resource.canonical, r.method.lower(), r.name)
        for r in app.router.routes()
        if r.resource is not None
    }


def test_every_route_is_documented_and_every_operation_is_served() -> None:
    served = {(path, method) for path, method, _ in app_routes() if method != "head"}
    documented = {(path, method) for path, method, _ in operations() if method != "head"}
    assert served - documented == set(), "routes the document lacks"
    assert documented - served == set(), "operations the app does not serve"


def test_operation_ids_are_route_names() -> None:
    names = {(path, method): name for path, method, name in app_routes()}
    for path, method, op in operations():
        expected = str(names[(path, method)]) + ("Head" if method == "head" else "")
        assert op["operationId"] == expected


def test_head_is_documented_where_aiohttp_serves_it() -> None:
    served = {(path, method) for path, method, _ in app_routes() if method == "head"}
    documented = {(path, method) for path, method, _ in operations() if method == "head"}
    assert served == documented


def test_parameters_are_documented() -> None:
    def names(path: str, method: str) -> dict[str, dict[str, Any]]:
        params = spec()["paths"][path].get("parameters", []) + operation(path, method).get(
            "parameters", []
        )
        return {p["name"]: p for p in map(deref, params)}

    handle = "/api/handles/{handle}"
    get = names(handle, "get")
    assert {"handle", "index", "type", "publicOnly", "auth"} <= set(get)
    for repeatable in ("index", "type"):
        assert get[repeatable]["schema"]["type"] == "array" and get[repeatable]["explode"]
    assert {"handle", "index", "overwrite", "mintNewSuffix"} <= set(names(handle, "put"))
    assert {"handle", "index"} <= set(names(handle, "delete"))
    listing = names("/api/handles", "get")
    assert listing["prefix"]["required"] is True
    assert listing["page"]["schema"]["default"] == 0
    assert listing["pageSize"]["schema"]["default"] == 1000
    assert names(handle, "put")["overwrite"]["schema"]["default"] is True


def test_writes_need_basic_or_handle_auth_with_the_prefix_identity() -> None:
    scheme = spec()["components"]["securitySchemes"]["handleBasic"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "basic")
    assert "300:0.NA/" in scheme["description"]
    for method in WRITES:
        assert operation("/api/handles/{handle}", method)["security"] == [
            {"handleBasic": []},
            {"handleChallenge": []},
        ]
        unauthorized = documented_response("/api/handles/{handle}", method, 401)
        assert unauthorized["headers"]["WWW-Authenticate"]["$ref"].endswith("WWW-Authenticate")


def test_put_documents_body_limits_and_shapes() -> None:
    put = operation("/api/handles/{handle}", "put")
    for status in ("413", "415"):
        assert status in put["responses"]
    body = deref(put["requestBody"])
    assert list(body["content"]) == ["application/json"]
    check = validator(body["content"]["application/json"]["schema"])
    for name, example in body["content"]["application/json"]["examples"].items():
        assert check.is_valid(example["value"]), name
    assert check.is_valid({"index": "3", "type": "X", "data": {"value": "implicit string"}})
    assert check.is_valid(
        {
            "index": 100,
            "type": "HS_ADMIN",
            "data": {
                "format": "admin",
                "value": {"handle": "0.NA/88.118.8", "index": 300, "permissions": "011111110011"},
            },
        }
    )
    assert not check.is_valid({"index": 1, "type": "URL", "data": 5})
    assert not check.is_valid({"index": 1, "type": "URL", "data": "x", "permissions": "11100"})
    assert not check.is_valid({"index": 1, "type": "URL", "data": {"format": "nope", "value": ""}})


def _error_classes() -> Iterator[type[ClientError]]:
    todo: list[type[ClientError]] = [ClientError]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


def _codes(schema: Any) -> set[int]:
    """The responseCode values an error schema allows (from its const/enum narrowing)."""
    schema = deref(schema)
    found: set[int] = set()
    rc = schema.get("properties", {}).get("responseCode", {})
    if "const" in rc:
        found.add(rc["const"])
    found.update(rc.get("enum", []))
    for sub in schema.get("allOf", []):
        found |= _codes(sub)
    return found


def test_error_statuses_follow_the_code_mapping() -> None:
    """Every (responseCode, HTTP status) pair the document promises for an error is one
    that the error classes produce for that kind of request."""
    for path, method, op in operations():
        if method == "head":
            continue
        write = method in WRITES
        produced = {(c.response_code, c("x").status_for(write=write)) for c in _error_classes()}
        produced.add((InternalError.response_code, InternalError.http_status))
        for status, response in op["responses"].items():
            content = deref(response).get("content", {}).get("application/json")
            if content is None:
                continue
            schema = deref(content["schema"])
            for branch in map(deref, schema.get("oneOf", [schema])):
                if "message" not in required_keys(branch, {}):
                    continue
                codes = _codes(branch)
                assert codes, f"{method} {path} {status}: error schema names no responseCode"
                for code in codes:
                    assert (code, int(status)) in produced, (method, path, status, code)


# --- real answers ---------------------------------------------------------------------------

HANDLE = "/api/handles/{handle}"


async def test_real_resolution_matches_the_document(
    node: RunningNode, tenant: TenantFactory
) -> None:
    t = await tenant()
    url = node.api(t.handle("Doc1"))
    async with node.session.put(url, json=[URL_VALUE, EMAIL_VALUE], headers=t.auth) as r:
        assert (await check_answer(r, HANDLE, "put", 201))["handle"] == t.handle("Doc1")

    async with node.session.get(url) as r:
        body = await check_answer(r, HANDLE, "get", 200)
        etag = r.headers["ETag"]
    assert set(body) == {"responseCode", "handle", "values"}
    value_schema = spec()["components"]["schemas"]["Value"]
    for value in body["values"]:
        assert set(value_schema["required"]) <= set(value) <= set(value_schema["properties"])

    async with node.session.get(url, headers={"If-None-Match": etag}) as r:
        assert r.status == 304
        documented_response(HANDLE, "get", 304)

    # the admin sees the record with its HS_ADMIN value, still documented
    async with node.session.get(url, headers=t.auth) as r:
        await check_answer(r, HANDLE, "get", 200)

    async with node.session.get(url, params={"type": "NOPE"}) as r:
        body = await check_answer(r, HANDLE, "get", 200)
    assert body["responseCode"] == 200 and set(body) == {"responseCode", "handle", "message"}


async def test_real_errors_match_the_document(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    url = node.api(t.handle("missing"))
    async with node.session.get(url) as r:
        body = await check_answer(r, HANDLE, "get", 404)
    assert body == {
        "responseCode": 100,
        "handle": t.handle("missing"),
        "message": body["message"],
    }

    async with node.session.get(url, params={"index": "zero"}) as r:
        await check_answer(r, HANDLE, "get", 400)

    async with node.session.put(url, json=[URL_VALUE]) as r:
        body = await check_answer(r, HANDLE, "put", 401)
    challenges = r.headers.getall("WWW-Authenticate")
    assert challenges[0] == 'Basic realm="handle"'
    assert challenges[1].startswith(f'Handle sessionId="{body["sessionId"]}", nonce="')
    assert body["responseCode"] == 402 and body["authenticated"] is False

    async with node.session.get(url, params={"publicOnly": "false"}) as r:
        await check_answer(r, HANDLE, "get", 401)

    async with node.session.put(
        url, data="[]", headers={**t.auth, "Content-Type": "text/plain"}
    ) as r:
        await check_answer(r, HANDLE, "put", 415)

    too_big = b'{"values": [], "pad": "' + b"x" * (Config().max_body_bytes + 1) + b'"}'
    headers = {**t.auth, "Content-Type": "application/json"}
    async with node.session.put(url, data=io.BytesIO(too_big), headers=headers) as r:
        await check_answer(r, HANDLE, "put", 413)

    async with node.session.put(url, json={"index": 1, "type": "URL"}, headers=t.auth) as r:
        assert (await check_answer(r, HANDLE, "put", 400))["responseCode"] == 202

    async with node.session.put(url, json=[URL_VALUE], headers=t.auth) as r:
        await check_answer(r, HANDLE, "put", 201)
    async with node.session.put(
        url, json=[URL_VALUE], headers=t.auth, params={"overwrite": "false"}
    ) as r:
        assert (await check_answer(r, HANDLE, "put", 409))["responseCode"] == 101

    async with node.session.delete(url, params={"index": "7"}, headers=t.auth) as r:
        assert (await check_answer(r, HANDLE, "delete", 400))["responseCode"] == 200
    async with node.session.delete(url, headers=t.auth) as r:
        await check_answer(r, HANDLE, "delete", 200)

    async with node.session.get(node.api("99.404.1/x")) as r:
        assert (await check_answer(r, HANDLE, "get", 400))["responseCode"] == 301


async def test_real_listings_match_the_document(node: RunningNode, tenant: TenantFactory) -> None:
    t = await tenant()
    async with node.session.put(node.api(t.handle("l1")), json=[URL_VALUE], headers=t.auth) as r:
        assert r.status == 201
    async with node.session.get(
        f"{node.url}/api/handles", params={"prefix": t.prefix}, headers=t.auth
    ) as r:
        body = await check_answer(r, "/api/handles", "get", 200)
    assert body["totalCount"] == "1" and body["handles"] == [t.handle("l1")]
    async with node.session.get(f"{node.url}/api/handles") as r:
        await check_answer(r, "/api/handles", "get", 400)
    async with node.session.get(f"{node.url}/api/prefixes") as r:
        body = await check_answer(r, "/api/prefixes", "get", 200)
    assert t.prefix in body["prefixes"]


async def test_real_operations_endpoints_match_the_document(node: RunningNode) -> None:
    async with node.session.get(f"{node.url}/healthz") as r:
        await check_answer(r, "/healthz", "get", 200)
    async with node.session.get(f"{node.url}/readyz") as r:
        await check_answer(r, "/readyz", "get", 200)
    async with node.session.get(f"{node.url}/metrics") as r:
        assert r.status == 200
        assert r.content_type in documented_response("/metrics", "get", 200)["content"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_head_answers_like_get(node: RunningNode, tenant: TenantFactory, method: str) -> None:
    t = await tenant()
    async with node.session.request(method, node.api(t.handle("nothing"))) as r:
        assert r.status == 404
        documented_response(HANDLE, method.lower(), 404)
