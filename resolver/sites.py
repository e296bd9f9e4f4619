"""Where a prefix is served: HS_SITE values read and written, the static map, the root.

A node finds the node responsible for a handle the Handle way: it asks the
root (top-level) node for ``0.NA/<prefix>``, walking up derived prefixes
(``88.200.1`` → ``88.200`` → ``88``) until one answers with an HS_SITE value,
and takes the HTTP (or HTTPS) interface of that site's server. The static map
(``IDNODE_UPSTREAMS``) is consulted first and needs no root. What the root said
is kept for the record's TTL (clamped), "no such prefix" for the negative TTL,
and a remembered site outlives its TTL by the stale bound when the root is down.

An HS_SITE value names servers by IP address; a base URL with a host name or a
path rides along as the site attribute ``idnode.url``, which this node prefers.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from yarl import URL

from registry import handle as hs
from registry import values as hv
from registry.errors import ClientError, NotResponsible, ServerTooBusy
from registry.handle import Handle, fold
from registry.site import ADMIN, QUERY, Interface, Server, Site, address_bytes
from resolver.cache import Clock, Entry
from resolver.config import Config

SITE_TYPE = "HS_SITE"
SITE_INDEX = 1
"""Where a homed prefix's record carries this node's HS_SITE (CNRI's servers use index 1)."""
URL_ATTRIBUTE = "idnode.url"
MAX_DEPTH = 10
"""Segments of the deepest prefix a walk up considers (a handle may have hundreds)."""
_PROTOCOL_OF_SCHEME = {"http": 2, "https": 3}
UDP, TCP = 0, 1
"""Interface protocols of RFC 3651 (HTTP is 2, HTTPS 3)."""

Query = Callable[[str, Handle, tuple[str, ...]], Awaitable[Entry]]
"""Ask the node at a base URL for a handle: (base URL, handle, via chain) → entry."""


def walk(prefix: str) -> list[str]:
    """``prefix`` and the prefixes it derives from, longest first, at most ``MAX_DEPTH`` deep."""
    return [p for p in hs.parent_prefixes(prefix) if p.count(".") < MAX_DEPTH]


def advertised_site(base_url: str, *, handle_port: int = 0) -> Site:
    """The HS_SITE describing a node reached at ``base_url`` (its HTTP or HTTPS interface),
    and over the Handle protocol (TCP and UDP queries) on ``handle_port`` when it is on."""
    url = URL(base_url)
    try:
        address = ipaddress.ip_address(url.host or "").packed.rjust(16, b"\x00")
    except ValueError:
        address = bytes(16)  # a host name: only the idnode.url attribute says where
    port = url.port or (443 if url.scheme == "https" else 80)
    interfaces = [Interface(ADMIN | QUERY, _PROTOCOL_OF_SCHEME[url.scheme], port)]
    if handle_port:
        interfaces += [Interface(QUERY, TCP, handle_port), Interface(QUERY, UDP, handle_port)]
    return Site(
        servers=(Server(1, address, b"", tuple(interfaces)),),
        attributes=((URL_ATTRIBUTE, base_url.rstrip("/")),),
        primary=True,
    )


def node_site(config: Config) -> Site:
    """This node's own site, as get-site-info gives it and its homed prefixes publish it:
    the advertised one (``IDNODE_ADVERTISE_URL``), else the Handle protocol's interfaces at
    the configured address (a host name gives 127.0.0.1: the record needs an address)."""
    if config.advertise_url:
        return advertised_site(config.advertise_url, handle_port=config.handle_port)
    try:
        address = address_bytes(config.handle_host or config.host)
    except ClientError:
        address = address_bytes("127.0.0.1")
    port = config.handle_port
    server = Server(1, address, b"", (Interface(QUERY, TCP, port), Interface(QUERY, UDP, port)))
    return Site(attributes=(("desc", "idnode"),), servers=(server,), primary=True)


def site_value(base_url: str, timestamp: str, *, handle_port: int = 0) -> hv.Value:
    """The HS_SITE value of a node reached at ``base_url``, for a prefix record."""
    data = advertised_site(base_url, handle_port=handle_port).to_json()
    return hv.Value(SITE_INDEX, SITE_TYPE, "site", data, timestamp=timestamp)


def read_site(value: hv.Value) -> Site | None:
    """The site of an HS_SITE value in JSON or binary (base64/hex) form; None if unreadable."""
    try:
        if value.format == "site":
            return Site.from_json(value.data)
        if value.format == "base64" and isinstance(value.data, str):
            return Site.decode(base64.b64decode(value.data, validate=True))
        if value.format == "hex" and isinstance(value.data, str):
            return Site.decode(bytes.fromhex(value.data))
    except (ClientError, binascii.Error, ValueError):
        return None
    return None


def base_url(site: Site) -> str | None:
    """The base URL of the site's HTTP or HTTPS query interface (the first server's)."""
    for name, text in site.attributes:
        if name == URL_ATTRIBUTE and not _bad_url(text):
            return text.rstrip("/")
    for server in site.servers:
        for interface in server.interfaces:
            if interface.protocol in (2, 3) and interface.type & QUERY:
                scheme = "https" if interface.protocol == 3 else "http"
                host = server.address_text
                if ":" in host:
                    host = f"[{host}]"
                return f"{scheme}://{host}:{interface.port}"
    return None


def _bad_url(text: str) -> bool:
    try:
        url = URL(text)
    except ValueError:
        return True
    return url.scheme not in _PROTOCOL_OF_SCHEME or not url.host


def site_urls(values: Iterable[hv.Value]) -> list[str]:
    """The base URLs of the HS_SITE values among ``values``, in index order."""
    found = []
    for value in sorted(values, key=lambda v: v.index):
        if value.type.upper() != SITE_TYPE:
            continue
        site = read_site(value)
        url = base_url(site) if site is not None else None
        if url is not None:
            found.append(url)
    return found


@dataclass(slots=True)
class _Known:
    url: str | None
    fresh_until: float


class Sites:
    """Finds the base URL of the node serving a prefix: static map, else the root."""

    def __init__(
        self,
        static: dict[str, str],
        root: str | None,
        query: Query,
        *,
        clock: Clock,
        stale_for: float,
        max_known: int = 10_000,
    ) -> None:
        self.static = {fold(prefix): url for prefix, url in static.items()}
        self.root = root.rstrip("/") if root else None
        self.query = query
        self.clock = clock
        self.stale_for = stale_for
        self.max_known = max_known
        self._known: dict[str, _Known] = {}

    async def locate(self, h: Handle, via: tuple[str, ...]) -> str | None:
        """The base URL to ask for ``h``; None when the root knows no site for its prefix."""
        if h.is_prefix_record:  # prefix records live at the root
            if self.root is None:
                raise NotResponsible(
                    f"prefix {h.suffix} is not homed here and IDNODE_ROOT_URL is not set",
                    handle=h.text,
                )
            return self.root
        for prefix in walk(h.prefix_key):
            if prefix in self.static:
                return self.static[prefix]
        if self.root is None:
            raise NotResponsible(
                f"prefix {h.prefix} is not homed here, not in IDNODE_UPSTREAMS,"
                " and IDNODE_ROOT_URL is not set",
                handle=h.text,
            )
        for prefix in walk(h.prefix_key):
            url = await self._site_of(prefix, via)
            if url is not None:
                return url
        return None

    async def _site_of(self, prefix: str, via: tuple[str, ...]) -> str | None:
        known = self._known.get(prefix)
        now = self.clock()
        if known is not None and known.fresh_until > now:
            return known.url
        assert self.root is not None
        try:
            entry = await self.query(self.root, hs.prefix_record(prefix), via)
        except ServerTooBusy:
            if known is not None and now - known.fresh_until <= self.stale_for:
                return known.url
            raise
        urls = site_urls(entry.record.values) if entry.record is not None else []
        url = urls[0] if urls else None
        if len(self._known) >= self.max_known:
            self._known.clear()
        self._known[prefix] = _Known(url, now + (entry.ttl or 0.0))
        return url
