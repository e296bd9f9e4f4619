"""Data templates over HTTP (``/api/templates/{prefix}``) and ``idnode template``.

``GET`` is public and answers the current template of a homed prefix (or an
earlier version with ``?version=K``); ``PUT`` stores a new version and
``DELETE`` a version that removes it, both by an admin of ``0.NA/<prefix>``.
The operator commands use the database directly, as ``idnode prefix add`` does.
Records written before a template change keep resolving; ``idnode template
check`` lists those that do not satisfy the current one.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from registry import handle as hs
from registry import templates
from registry import values as hv
from registry.errors import HandleNotFound, InvalidTemplate, ProtocolError
from registry.store import Store, translated
from resolver.api import HANDLE_TEXT, NODE, json_body, json_response
from resolver.commands import run, with_store
from resolver.config import Config

# --- HTTP ----------------------------------------------------------------------------------


def _prefix(request: web.Request) -> str:
    prefix = request.match_info["prefix"]
    request[HANDLE_TEXT] = prefix
    return hs.check_prefix(prefix)


def _version(request: web.Request) -> int | None:
    raw = request.query.get("version")
    if raw is None:
        return None
    if not hv.is_number(raw) or not 1 <= int(raw) <= hv.MAX_INDEX:
        raise ProtocolError(f"query parameter version must be an integer from 1 to {hv.MAX_INDEX}")
    return int(raw)


def _timestamp(at: datetime.datetime) -> str:
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _missing(prefix: str, version: int | None, found: templates.StoredTemplate | None) -> str:
    if found is not None:
        return f"version {found.version} of the data template of {prefix} removed it"
    if version is not None:
        return f"prefix {prefix} has no data template version {version}"
    return f"prefix {prefix} has no data template"


async def get_template(request: web.Request) -> web.Response:
    node = request.app[NODE]
    prefix = _prefix(request)
    version = _version(request)
    await node.store.require_homed(prefix, prefix)
    found = await node.registry.templates.stored(node.store.pool, prefix, version)
    if found is None or found.schema is None:
        raise HandleNotFound(_missing(prefix, version, found), handle=prefix)
    return json_response(
        {
            "responseCode": 1,
            "prefix": found.prefix,
            "version": found.version,
            "template": found.schema,
            "createdAt": _timestamp(found.created_at),
        }
    )


async def put_template(request: web.Request) -> web.Response:
    node = request.app[NODE]
    prefix = _prefix(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        message = "the body must be a template: a JSON object (a JSON Schema)"
        raise InvalidTemplate(message, details=[{"field": "/", "rule": "type", "message": message}])
    who = await node.authn.caller(request, needs_identity=True)
    version = await node.registry.set_template(who, prefix, body)
    return json_response({"responseCode": 1, "prefix": prefix, "version": version}, 201)


async def delete_template(request: web.Request) -> web.Response:
    node = request.app[NODE]
    prefix = _prefix(request)
    who = await node.authn.caller(request, needs_identity=True)
    version = await node.registry.set_template(who, prefix, None)
    return json_response({"responseCode": 1, "prefix": prefix, "version": version})


def add_routes(app: web.Application) -> None:
    """Register this module's HTTP routes."""
    app.router.add_get("/api/templates/{prefix}", get_template, name="template")
    app.router.add_put("/api/templates/{prefix}", put_template, name="template-set")
    app.router.add_delete("/api/templates/{prefix}", delete_template, name="template-remove")


# --- idnode template -----------------------------------------------------------------------


def _read_template(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path`` (``-``: standard input); None, having said why, if not."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        loaded = orjson.loads(raw)
    except OSError as exc:
        print(f"idnode: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return None
    except orjson.JSONDecodeError as exc:
        print(f"idnode: {path} is not valid JSON: {exc}", file=sys.stderr)
        return None
    if not isinstance(loaded, dict):
        print(f"idnode: {path} must hold a JSON object (a JSON Schema)", file=sys.stderr)
        return None
    return loaded


def _print_problems(problems: list[dict[str, str]], indent: str = "  ") -> None:
    for p in problems:
        print(f"{indent}{p['field']}: {p['rule']}: {p['message']}")


def cmd_template_set(config: Config, args: argparse.Namespace) -> int:
    from resolver.app import node_registry

    schema = _read_template(args.file)
    if schema is None:
        return 1

    async def work(store: Store) -> int:
        registry = node_registry(config, store)
        try:
            version = await registry.operator_set_template(args.prefix, schema, actor="cli")
        except InvalidTemplate as exc:
            print(f"idnode: {args.file} is not a valid template:", file=sys.stderr)
            _print_problems(exc.details or [])
            return 1
        print(f"idnode: stored version {version} of the data template of {args.prefix}")
        print(f"idnode: `idnode template check {args.prefix}` lists records it refuses")
        return 0

    return run(with_store(config, work))


def cmd_template_remove(config: Config, args: argparse.Namespace) -> int:
    from resolver.app import node_registry

    async def work(store: Store) -> int:
        version = await node_registry(config, store).operator_set_template(args.prefix, None)
        print(f"idnode: version {version} removes the data template of {args.prefix}")
        return 0

    return run(with_store(config, work))


def cmd_template_show(config: Config, args: argparse.Namespace) -> int:

    async def work(store: Store) -> int:
        await store.require_homed(hs.check_prefix(args.prefix), args.prefix)
        found = await templates.Templates().stored(store.pool, args.prefix, args.version)
        if found is None or found.schema is None:
            print(f"idnode: {_missing(args.prefix, args.version, found)}", file=sys.stderr)
            return 1
        print(
            f"idnode: version {found.version} of {found.prefix},"
            f" set {_timestamp(found.created_at)} by {found.actor}",
            file=sys.stderr,
        )
        print(orjson.dumps(found.schema, option=orjson.OPT_INDENT_2).decode())
        return 0

    return run(with_store(config, work))


def cmd_template_check(config: Config, args: argparse.Namespace) -> int:

    async def work(store: Store) -> int:
        prefix = hs.check_prefix(args.prefix)
        await store.require_homed(prefix, prefix)
        violating = 0
        async with translated(), store.pool.acquire() as conn:
            template = await templates.Templates().current(conn, hs.fold(prefix))
            if template is None:
                print(f"idnode: prefix {prefix} has no data template")
                return 0
            async for handle, problems in templates.violators(conn, template):
                violating += 1
                print(handle)
                _print_problems(problems)
        if violating:
            print(
                f"idnode: {violating} record(s) under {prefix} do not satisfy version"
                f" {template.version} of its data template",
                file=sys.stderr,
            )
            return 1
        print(f"idnode: every record under {prefix} satisfies version {template.version}")
        return 0

    return run(with_store(config, work))


def _version_number(text: str) -> int:
    if not hv.is_number(text) or not 1 <= int(text) <= hv.MAX_INDEX:
        raise argparse.ArgumentTypeError(f"a version is an integer from 1 to {hv.MAX_INDEX}")
    return int(text)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this module's `idnode` subcommands."""
    parser = sub.add_parser("template", help="manage the data templates of homed prefixes")
    tsub = parser.add_subparsers(dest="template_command", required=True)
    put = tsub.add_parser("set", help="store FILE (a JSON Schema) as PREFIX's new template version")
    put.add_argument("prefix", help="a homed prefix, e.g. 88.118.8")
    put.add_argument("file", help="the template as a JSON file ('-' reads standard input)")
    put.set_defaults(func=cmd_template_set)
    show = tsub.add_parser("show", help="print PREFIX's current template (or version N)")
    show.add_argument("prefix")
    show.add_argument("--version", type=_version_number, help="an earlier version")
    show.set_defaults(func=cmd_template_show)
    check = tsub.add_parser("check", help="list PREFIX's records that violate its template")
    check.add_argument("prefix")
    check.set_defaults(func=cmd_template_check)
    remove = tsub.add_parser("remove", help="store a version of PREFIX's template that lifts it")
    remove.add_argument("prefix")
    remove.set_defaults(func=cmd_template_remove)
