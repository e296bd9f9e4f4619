"""Data templates: per-prefix JSON Schemas (draft 2020-12) that the prefix's records satisfy.

A template is a JSON Schema of an object whose properties are the record's fields.
Each property names, in its ``x-handle`` keyword, the Handle value type it reads
and optionally the index::

    {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
     "properties": {"partNumber": {"type": "string", "pattern": "^[A-Z0-9-]+$",
                                   "x-handle": {"type": "PART_NUMBER", "index": 2}}},
     "required": ["partNumber"], "additionalProperties": false}

A record is checked as the object that holds, for each property, the data of the
value it reads (the value of that type at that index, or the one of that type with
the lowest index), a string turned into a number or boolean when the property's
``type`` asks for one and the text is one. ``additionalProperties: false`` also
refuses values of a type no property names (``HS_*`` system types are always
allowed). Each failing field is reported once, with the JSON Schema keyword it
failed: ``{"field", "rule", "message"}``.

Templates are kept as numbered versions in the ``templates`` table (a NULL schema
removes the template); ``Templates`` caches each prefix's compiled current one.
Patterns use a linear-time regex engine (no look-around or back-references), and
``format`` (``date``, ``date-time``, ``email``, ...) is asserted.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import jsonschema_rs
import orjson

from registry import audit
from registry import handle as hs
from registry import values as hv
from registry.errors import HandleNotFound, InvalidTemplate, StoreError, TemplateViolation
from registry.store import Transaction, translated

DRAFT = "https://json-schema.org/draft/2020-12/schema"
EXTENSION = "x-handle"
"""The keyword of a property naming the value it reads: ``{"type": ..., "index": ...}``."""
MAX_FIELDS = 256
"""Properties of one template: compiling one holds the event loop (under 2 ms a property)."""
MAX_REGEX_BYTES = 200_000
"""Compiled size of one ``pattern``: bounds its compile time (``^\\w{1,500}$`` fits)."""
MAX_MESSAGE = 300
"""Longest violation message, in characters (the value checked may be 64 KiB long)."""
_ROOT_KEYWORDS = frozenset(
    {
        "$schema",
        "$comment",
        "$defs",
        "title",
        "description",
        "examples",
        "type",
        "properties",
        "required",
        "additionalProperties",
    }
)
_SYSTEM_TYPE = "hs_"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,17})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?")
_COMPILE_OPTIONS: dict[str, Any] = {
    "offline": True,  # a $ref to anything outside the template fails instead of fetching
    "validate_formats": True,
    "ignore_unknown_formats": False,
    # a linear-time engine: no pattern backtracks catastrophically on a writer's value
    "pattern_options": jsonschema_rs.RegexOptions(size_limit=MAX_REGEX_BYTES),
}
_meta_validator = jsonschema_rs.Draft202012Validator({"$ref": DRAFT}, offline=True)

Violation = dict[str, str]


def _problem(pointer: str, rule: str, message: str) -> Violation:
    return {"field": pointer or "/", "rule": rule, "message": message}


def _pointer(path: Sequence[str | int]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _fold(text: str) -> str:
    return text.lower() if text.isascii() else hs.fold(text)


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


# --- reading a template ---------------------------------------------------------------------


def _binding_problems(name: str, prop: Any) -> list[Violation]:
    where = _pointer(["properties", name])
    if not isinstance(prop, Mapping):
        return [_problem(where, "properties", f"property {name!r} must be a schema object")]
    binding = prop.get(EXTENSION)
    here = f"{where}/{EXTENSION}"
    if not isinstance(binding, Mapping):
        return [
            _problem(
                here,
                EXTENSION,
                f'property {name!r} must name the value it reads: "{EXTENSION}": {{"type": ...}}',
            )
        ]
    problems = []
    if set(binding) - {"type", "index"}:
        extra = ", ".join(sorted(map(str, set(binding) - {"type", "index"})))
        problems.append(_problem(here, EXTENSION, f"{EXTENSION} has only type and index: {extra}"))
    vtype = binding.get("type")
    if (
        not isinstance(vtype, str)
        or not vtype
        or len(vtype) > hv.MAX_TYPE_LENGTH
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in vtype)
    ):
        problems.append(
            _problem(
                f"{here}/type", EXTENSION, f"{EXTENSION} type of {name!r} must be a value type"
            )
        )
    if "index" in binding:
        index = binding["index"]
        if type(index) is not int or not 1 <= index <= hv.MAX_INDEX:
            problems.append(
                _problem(
                    f"{here}/index",
                    EXTENSION,
                    f"{EXTENSION} index of {name!r} must be an integer from 1 to {hv.MAX_INDEX}",
                )
            )
    return problems


def _structure_problems(schema: Mapping[str, Any]) -> list[Violation]:
    """What makes ``schema`` a JSON Schema but not a template."""
    problems = []
    for key in schema:
        if key not in _ROOT_KEYWORDS and not str(key).startswith("x-"):
            problems.append(
                _problem(
                    _pointer([key]),
                    "structure",
                    f"a template does not use {key!r} at its top level (it uses "
                    f"{', '.join(sorted(_ROOT_KEYWORDS))} and x-* annotations)",
                )
            )
    if "$schema" in schema and str(schema["$schema"]).rstrip("#") != DRAFT:
        problems.append(_problem("/$schema", "$schema", f"templates are JSON Schema {DRAFT}"))
    if schema.get("type", "object") != "object":
        problems.append(
            _problem("/type", "type", 'a template describes an object: "type": "object"')
        )
    if "additionalProperties" in schema and not isinstance(schema["additionalProperties"], bool):
        problems.append(
            _problem("/additionalProperties", "additionalProperties", "must be true or false")
        )
    properties = schema.get("properties", {})
    if not isinstance(properties, Mapping):
        return [*problems, _problem("/properties", "properties", "properties must be an object")]
    if len(properties) > MAX_FIELDS:
        problems.append(
            _problem("/properties", "properties", f"a template has at most {MAX_FIELDS} properties")
        )
    for name, prop in properties.items():
        problems += _binding_problems(name, prop)
    required = schema.get("required", [])
    for i, name in enumerate(required if isinstance(required, list) else []):
        if name not in properties:
            problems.append(
                _problem(f"/required/{i}", "required", f"required {name!r} is not a property")
            )
    return problems


def _readings(schema: Mapping[str, Any]) -> list[Violation]:
    """Two properties reading the same value would report one problem twice."""
    seen: dict[tuple[str, int | None], str] = {}
    problems = []
    for name, prop in schema.get("properties", {}).items():
        binding = prop[EXTENSION]
        key = (_fold(binding["type"]), binding.get("index"))
        if key in seen:
            problems.append(
                _problem(
                    _pointer(["properties", name, EXTENSION]),
                    EXTENSION,
                    f"{name!r} reads the same value as {seen[key]!r}",
                )
            )
        seen.setdefault(key, name)
    return problems


def _types(schema: Mapping[str, Any], prop: Mapping[str, Any]) -> set[str]:
    """The JSON types a property asks for (following a local ``$ref`` or two)."""
    for _ in range(4):
        ref = prop.get("$ref")
        if "type" in prop or not isinstance(ref, str) or not ref.startswith("#/$defs/"):
            break
        target = schema.get("$defs", {}).get(ref.removeprefix("#/$defs/"))
        if not isinstance(target, Mapping):
            break
        prop = target
    declared = prop.get("type")
    return {declared} if isinstance(declared, str) else set(declared or ())


def _converter(types: set[str]) -> Callable[[Any], Any] | None:
    """How the text of a value becomes the JSON type the property asks for (None: as it is)."""
    numeric = types & {"integer", "number"}
    boolean = "boolean" in types
    if "string" in types or not (numeric or boolean):
        return None

    def convert(data: Any) -> Any:
        if not isinstance(data, str):
            return data
        if numeric and _NUMBER.fullmatch(data):
            number = float(data) if ("." in data or "e" in data or "E" in data) else int(data)
            return number if math.isfinite(number) else data
        if boolean and data in ("true", "false"):
            return data == "true"
        return data

    return convert


def _compiled(schema: Mapping[str, Any], pointers: Sequence[str]) -> jsonschema_rs.ValidatorMap:
    """The validators of the template (``#``) and of each of its subschemas.

    ``validator_map_for`` leaves out a subschema that does not compile (a bad
    ``pattern``, an unknown ``format``) instead of failing; then ``validator_for``
    compiles the whole template to say what is wrong.
    """
    try:
        compiled = jsonschema_rs.validator_map_for(dict(schema), **_COMPILE_OPTIONS)
        if "#" in compiled and all(p in compiled for p in pointers):
            return compiled
        jsonschema_rs.validator_for(dict(schema), **_COMPILE_OPTIONS)
        raise ValueError("a part of the template does not compile")
    except jsonschema_rs.ValidationError as exc:
        where, message = _pointer(exc.instance_path), exc.message
        if message.startswith("Unknown format"):
            message = f"format {exc.instance!r} is not a format this node knows"
        problem = _problem(where, _rule(exc), _short(message))
    except jsonschema_rs.ReferencingError as exc:
        problem = _problem("/", "$ref", _short(str(exc)))
    except ValueError as exc:  # e.g. "Recursion limit reached" for a schema nested too deep
        problem = _problem("/", "structure", _short(str(exc)))
    raise InvalidTemplate(
        f"the template is not valid JSON Schema: {problem['field']}: {problem['message']}",
        details=[problem],
    )


def _rule(error: jsonschema_rs.ValidationError) -> str:
    """The template's keyword at fault: the last keyword of the path, else the failed rule."""
    keyword = next((p for p in reversed(error.instance_path) if isinstance(p, str)), None)
    return keyword or str(error.kind.name)


def compile_template(schema: Any, *, prefix: str = "", version: int = 0) -> Template:
    """A checked, compiled template; ``InvalidTemplate`` lists every problem found."""
    if not isinstance(schema, Mapping):
        raise InvalidTemplate(
            "a template is a JSON object (a JSON Schema)",
            details=[_problem("/", "type", "a template is a JSON object (a JSON Schema)")],
        )
    try:
        problems = [
            _problem(_pointer(e.instance_path), _rule(e), _short(e.message))
            for e in _meta_validator.iter_errors(dict(schema))
        ]
    except ValueError as exc:
        problems = [_problem("/", "structure", _short(str(exc)))]
    if not problems:
        problems = _structure_problems(schema)
    if not problems:
        problems = _readings(schema)
    if problems:
        first = problems[0]
        raise InvalidTemplate(
            f"the template is not valid: {first['field']}: {first['message']}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            details=problems,
        )
    properties = schema.get("properties", {})
    compiled = _compiled(schema, ["#" + _pointer(["properties", name]) for name in properties])
    fields = []
    for name, prop in properties.items():
        binding = prop[EXTENSION]
        fields.append(
            Field(
                name=name,
                type=binding["type"],
                type_key=_fold(binding["type"]),
                index=binding.get("index"),
                validator=compiled["#" + _pointer(["properties", name])],
                convert=_converter(_types(schema, prop)),
            )
        )
    return Template(
        prefix=prefix,
        version=version,
        schema=schema,
        fields=tuple(fields),
        required=frozenset(schema.get("required", ())),
        closed=schema.get("additionalProperties") is False,
        root=compiled["#"],
    )


# --- checking a record ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Field:
    """One property of a template: the value it reads and its compiled schema."""

    name: str
    type: str
    type_key: str
    index: int | None
    validator: jsonschema_rs.Validator
    convert: Callable[[Any], Any] | None
    """How the value's data becomes the JSON the schema checks; None: as it is."""


def _pick(f: Field, lowest: Mapping[str, hv.Value], values: Sequence[hv.Value]) -> hv.Value | None:
    if f.index is None:
        return lowest.get(f.type_key)
    return next((v for v in values if v.index == f.index and _fold(v.type) == f.type_key), None)


@dataclass(frozen=True, slots=True, eq=False)
class Template:
    """A compiled template version. ``schema`` is the template as written (do not change it)."""

    prefix: str
    version: int
    schema: Mapping[str, Any]
    fields: tuple[Field, ...]
    required: frozenset[str]
    closed: bool
    """``additionalProperties: false``: values of types no property names are refused."""
    root: jsonschema_rs.Validator
    _named: frozenset[str] = field(init=False)
    _by_type: tuple[Field, ...] = field(init=False)
    _by_index: tuple[Field, ...] = field(init=False)

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "_named", frozenset(f.type_key for f in self.fields))
        set_field(self, "_by_type", tuple(f for f in self.fields if f.index is None))
        set_field(self, "_by_index", tuple(f for f in self.fields if f.index is not None))

    def violations(self, values: Sequence[hv.Value]) -> list[Violation]:
        """One entry per failing field (``field``, ``rule``, ``message``); empty when valid.

        Called for every row of a bulk import: the valid case is one pass over the
        values, one over the fields and one call of the compiled whole-template validator.
        """
        lowest: dict[str, hv.Value] = {}
        for v in values:
            t = v.type
            key = t.lower() if t.isascii() else hs.fold(t)
            held = lowest.get(key)
            if held is None or v.index < held.index:
                lowest[key] = v
        instance: dict[str, Any] = {}
        for f in self._by_type:
            value = lowest.get(f.type_key)
            if value is not None:
                instance[f.name] = value.data if f.convert is None else f.convert(value.data)
        for f in self._by_index:
            value = _pick(f, lowest, values)
            if value is not None:
                instance[f.name] = value.data if f.convert is None else f.convert(value.data)
        extra = self._extra_types(lowest) if self.closed else []
        if not extra and self.root.is_valid(instance):
            return []
        return self._explain(instance, lowest, values) + extra

    def require(self, handle: str, values: Sequence[hv.Value]) -> None:
        """Raise ``TemplateViolation`` (one detail per failing field) unless ``values`` comply."""
        problem = self.violation(handle, values)
        if problem is not None:
            raise problem

    def violation(self, handle: str, values: Sequence[hv.Value]) -> TemplateViolation | None:
        """The error ``require`` raises for ``values``; None when they comply."""
        problems = self.violations(values)
        if not problems:
            return None
        listed = "; ".join(p["message"] for p in problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return TemplateViolation(
            f"{handle} does not satisfy version {self.version} of the data template of"
            f" {self.prefix}: {listed}{more}",
            handle=handle,
            details=problems,
        )

    def _extra_types(self, lowest: Mapping[str, hv.Value]) -> list[Violation]:
        named = self._named
        return [
            {
                "field": value.type,
                "rule": "additionalProperties",
                "message": _short(
                    f"value {value.index}: type {value.type} is not one of this template's fields"
                    " (additionalProperties is false)"
                ),
            }
            for key, value in lowest.items()
            if key not in named and not key.startswith(_SYSTEM_TYPE)
        ]

    def _explain(
        self,
        instance: Mapping[str, Any],
        lowest: Mapping[str, hv.Value],
        values: Sequence[hv.Value],
    ) -> list[Violation]:
        out = []
        for f in self.fields:
            if f.name not in instance:
                if f.name in self.required:
                    where = f" at index {f.index}" if f.index is not None else ""
                    out.append(
                        {
                            "field": f.name,
                            "rule": "required",
                            "message": f"{f.name} is required: a value of type {f.type}{where}",
                        }
                    )
                continue
            error = next(iter(f.validator.iter_errors(instance[f.name])), None)
            if error is not None:
                value = _pick(f, lowest, values)
                assert value is not None
                out.append(
                    {
                        "field": f.name,
                        "rule": str(error.kind.name),
                        "message": _short(
                            f"{f.name} (value {value.index}, {value.type}): {error.message}"
                        ),
                    }
                )
        return out


# --- storage --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """One stored version as written; ``schema`` None: this version removed the template."""

    prefix: str
    version: int
    schema: dict[str, Any] | None
    created_at: datetime.datetime
    actor: str


_CURRENT = (
    "SELECT version, prefix, schema IS NULL AS removed,"
    " CASE WHEN version = $2 THEN NULL ELSE schema END AS schema"
    " FROM templates WHERE prefix_key = $1 ORDER BY version DESC LIMIT 1"
)
_COLUMNS = "prefix, version, schema, created_at, actor"


def _stored(row: asyncpg.Record) -> StoredTemplate:
    schema = None if row["schema"] is None else orjson.loads(row["schema"])
    return StoredTemplate(row["prefix"], row["version"], schema, row["created_at"], row["actor"])


class Templates:
    """Each prefix's current template, compiled once per version in this process.

    ``current`` asks the database for the newest version on every call (one
    primary-key read; the schema text travels only when the version is new here),
    so a change made by any process applies to the next write everywhere.
    """

    def __init__(self) -> None:
        self._current: dict[str, tuple[int, Template | None]] = {}

    async def current(self, conn: asyncpg.Connection, prefix_key: str) -> Template | None:
        """The template records under ``prefix_key`` must satisfy now; None when there is none."""
        cached = self._current.get(prefix_key)
        known = cached[0] if cached is not None else 0
        async with translated():
            row = await conn.fetchrow(_CURRENT, prefix_key, known)
        if row is None:
            self._current.pop(prefix_key, None)
            return None
        if cached is not None and row["version"] == known:
            return cached[1]
        template = None
        if not row["removed"]:
            try:
                template = compile_template(
                    orjson.loads(row["schema"]), prefix=row["prefix"], version=row["version"]
                )
            except InvalidTemplate as exc:  # stored ones compiled when written
                raise StoreError(
                    f"stored template {row['version']} of {row['prefix']} does not compile:"
                    f" {exc.message}"
                ) from None
        self._current[prefix_key] = (row["version"], template)
        return template

    async def stored(
        self, conn: asyncpg.Connection | asyncpg.Pool, prefix: str, version: int | None = None
    ) -> StoredTemplate | None:
        """A version as written (the newest when ``version`` is None); None if there is none."""
        async with translated():
            if version is None:
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM templates WHERE prefix_key = $1"
                    " ORDER BY version DESC LIMIT 1",
                    hs.fold(prefix),
                )
            else:
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM templates WHERE prefix_key = $1 AND version = $2",
                    hs.fold(prefix),
                    version,
                )
        return None if row is None else _stored(row)

    async def put(
        self, tx: Transaction, prefix: str, schema: Mapping[str, Any] | None, actor: str
    ) -> int:
        """Store the next version of ``prefix``'s template (None removes it); answer its number.

        Versions of one prefix are written one at a time (a transaction-scoped
        advisory lock); removing a template that is not there is ``HandleNotFound``.
        """
        if schema is not None:
            compile_template(schema, prefix=prefix)
        key = hs.fold(prefix)
        conn = tx.conn
        async with translated():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('idnode-template:' || $1, 0))", key
            )
            latest = await conn.fetchrow(
                "SELECT version, schema::text AS schema FROM templates WHERE prefix_key = $1"
                " ORDER BY version DESC LIMIT 1",
                key,
            )
            before = None if latest is None else latest["schema"]
            if schema is None and before is None:
                raise HandleNotFound(f"prefix {prefix} has no data template", handle=prefix)
            version = 1 if latest is None else latest["version"] + 1
            after = None if schema is None else orjson.dumps(schema).decode()
            await conn.execute(
                "INSERT INTO templates (prefix_key, version, prefix, schema, actor)"
                " VALUES ($1, $2, $3, $4::json, $5)",
                key,
                version,
                prefix,
                after,
                actor,
            )
            operation = "template-set" if schema is not None else "template-remove"
            record = hs.prefix_record(prefix).text
            await audit.append(conn, [audit.Change(actor, operation, record, None, before, after)])
        return version


async def violators(
    conn: asyncpg.Connection, template: Template, *, page: int = 500
) -> AsyncIterator[tuple[str, list[Violation]]]:
    """Every record under the template's prefix that does not satisfy it, with its violations.

    Reads the records a page at a time in key order (``suffix_key > last``), so a
    large prefix is scanned without holding it in memory.
    """
    key, after = hs.fold(template.prefix), ""
    while True:
        async with translated():
            rows = await conn.fetch(
                'SELECT suffix_key, handle, "values" FROM handles'
                " WHERE prefix_key = $1 AND suffix_key > $2 ORDER BY suffix_key LIMIT $3",
                key,
                after,
                page,
            )
        for row in rows:
            values = [hv.from_stored(item) for item in orjson.loads(row["values"])]
            found = template.violations(values)
            if found:
                yield row["handle"], found
        if len(rows) < page:
            return
        after = rows[-1]["suffix_key"]
