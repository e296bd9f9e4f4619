"""The browser face of resolution, as hdl.handle.net and doi.org have it.

``GET /{handle}`` (a QR code on a product opens it) answers 302 to the record's
URL: the lowest index of type URL, or the one named by ``?index=``. Only public
values count, only ``http``/``https`` targets are followed (a ``javascript:`` or
other URL is shown, never redirected to). ``?noredirect``, or a record without
such a URL, shows the record as a small server-rendered page readable on a
phone; a missing identifier gets a "not found" page with status 404. ``/`` is
a home page with a lookup form. ``Accept: application/json`` gets the API's JSON.

Resolution goes through the same pipeline and cache as ``/api/handles``. Every
piece of user data is escaped.
"""

from __future__ import annotations

import html
from urllib.parse import quote, urlsplit

import orjson
from aiohttp import web

from registry import handle as hs
from registry import values as hv
from registry.errors import ClientError, HandleNotFound
from resolver import api
from resolver.pipeline import resolve

RESERVED = frozenset({"api", "hrls", "metrics", "healthz", "readyz"})
"""First path segments that are never identifiers: unknown paths there are the API's 404."""

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2733;
background:#f5f7fa}
main{max-width:56rem;margin:0 auto;padding:1rem}
h1{font-size:1.3rem;word-break:break-all}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:.5rem;border-bottom:1px solid #dde3ea;vertical-align:top}
td:nth-child(3){overflow-wrap:anywhere}
th{font-size:.8rem;color:#5a6b7d;text-transform:uppercase}
form{display:flex;gap:.5rem;flex-wrap:wrap}
input[type=text]{flex:1 1 16rem;padding:.6rem;font-size:1rem}
button{padding:.6rem 1rem;font-size:1rem}
.note{color:#5a6b7d;font-size:.9rem}
@media (max-width:40rem){td:nth-child(4),th:nth-child(4),td:nth-child(5),th:nth-child(5)
{display:none}}
"""


def _page(title: str, body: str, status: int = 200) -> web.Response:
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><main>{body}<p class="note"><a href="/">Look up another identifier</a></p>'
        "</main></body></html>"
    )
    return web.Response(text=document, status=status, content_type="text/html", charset="utf-8")


def _link(handle: str) -> str:
    return f'<a href="/{html.escape(quote(handle, safe="/"))}">{html.escape(handle)}</a>'


def _followable(url: object) -> bool:
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _shown(value: hv.Value) -> str:
    """The value's data as HTML: links for web addresses and references, escaped text else."""
    data = value.data
    if value.format == "admin" and isinstance(data, dict):
        ref = str(data.get("handle", ""))
        return f"{_link(ref)} index {int(data.get('index', 0))}"
    if value.format == "vlist" and isinstance(data, list):
        refs = [f"{int(m.get('index', 0))}:{_link(str(m.get('handle', '')))}" for m in data]
        return ", ".join(refs)
    if isinstance(data, str):
        if value.type.upper() == "URL" and _followable(data):
            href = html.escape(data.strip())
            return f'<a href="{href}" rel="nofollow noopener">{html.escape(data)}</a>'
        return html.escape(data)
    return html.escape(orjson.dumps(data).decode("utf-8"))


def _record_page(text: str, values: list[hv.Value]) -> web.Response:
    rows = "".join(
        f"<tr><td>{v.index}</td><td>{html.escape(v.type)}</td><td>{_shown(v)}</td>"
        f"<td>{v.ttl}</td><td>{html.escape(v.timestamp)}</td></tr>"
        for v in values
    )
    body = (
        f"<h1>{html.escape(text)}</h1>"
        "<table><thead><tr><th>Index</th><th>Type</th><th>Value</th><th>TTL</th>"
        f"<th>Timestamp</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    if not values:
        body += '<p class="note">This identifier has no public values.</p>'
    return _page(text, body)


def _error_page(text: str, exc: ClientError) -> web.Response:
    status = exc.status_for(write=False)
    if isinstance(exc, HandleNotFound):
        title, detail = "Identifier not found", f"{html.escape(text)} is not registered here."
    else:
        title, detail = "Cannot resolve this identifier", html.escape(exc.message)
    return _page(title, f"<h1>{title}</h1><p>{detail}</p>", status)


def _wants_json(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept


async def home(request: web.Request) -> web.Response:
    wanted = request.query.get("handle", "").strip()
    if wanted:
        target = "/" + quote(wanted, safe="/")
        if "noredirect" in request.query:
            target += "?noredirect"
        raise web.HTTPFound(target)
    body = (
        "<h1>Identifier resolution</h1>"
        '<form action="/" method="get" role="search">'
        '<input type="text" name="handle" placeholder="88.118.8/JXDY2106023" '
        'aria-label="Identifier" required autofocus>'
        '<label><input type="checkbox" name="noredirect"> show the record</label>'
        "<button type=submit>Resolve</button></form>"
        '<p class="note">Enter an identifier (prefix/suffix) to open what it points to, '
        "or tick the box to see its public record.</p>"
    )
    return _page("Identifier resolution", body)


async def browse(request: web.Request) -> web.StreamResponse:
    raw = request.rel_url.raw_path[1:]
    if raw.split("/", 1)[0] in RESERVED:
        raise web.HTTPNotFound()
    node = request.app[api.NODE]
    if _wants_json(request):
        return await _json(request, raw)
    text = raw
    try:
        text = hs.decode_path(raw)
        entry = await resolve(node.pipeline, hs.parse(text))
        if entry.record is None:
            raise HandleNotFound(handle=text)
    except ClientError as exc:
        return _error_page(text, exc)
    public = [v for v in entry.record.values if v.public_read]
    if "noredirect" not in request.query:
        target = _redirect_target(request, public)
        if target is not None:
            response = web.Response(status=302, headers={"Location": target})
            response.headers["Cache-Control"] = f"max-age={entry.max_age}"
            return response
    return _record_page(text, public)


def _redirect_target(request: web.Request, public: list[hv.Value]) -> str | None:
    raw_index = request.query.get("index")
    if raw_index is not None:
        if not hv.is_number(raw_index):
            return None
        chosen = [v for v in public if v.index == int(raw_index)]
    else:
        chosen = sorted((v for v in public if v.type.upper() == "URL"), key=lambda v: v.index)
    for value in chosen[:1]:
        if isinstance(value.data, str) and _followable(value.data):
            return value.data.strip()
    return None


async def _json(request: web.Request, raw: str) -> web.Response:
    """The API's JSON answer for the identifier in the path."""
    text = hs.decode_path(raw)
    h = hs.parse(text)
    request[api.HANDLE_TEXT] = text
    entry = await resolve(request.app[api.NODE].pipeline, h)
    return api.plain_answer(request, text, entry)


def add_routes(app: web.Application) -> None:
    """The home page, and (registered last) every other GET path as an identifier."""
    app.router.add_get("/", home, name="home")
    app.router.add_get("/{handle:.+}", browse, name="browse")
