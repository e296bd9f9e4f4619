"""Recursion: resolving handles of prefixes this node does not home through other nodes.

Two stages join the pipeline. ``Referral`` sits below the cache: when the store
answers ``NotResponsible`` it serves a delegation record (``0.NA/<child>`` of a
prefix homed here) from the store, or, with recursion on, asks the node
responsible (found by ``resolver.sites``) over the Handle JSON REST API. What
comes back is checked (the handle asked for, values the node's own parser
accepts) and cached for the record's TTL, clamped to the configured bounds;
"not found" for the negative TTL. ``LoopGuard`` sits above the cache and
refuses a request that has passed through this process already.

Each request to another node carries ``X-Idnode-Via``: the ids of the node
processes it went through. A process finding its own id there, or a chain of
``MAX_HOPS``, refuses to recurse. Failures are bounded: a timeout per request,
a retry with jittered back-off, and a circuit breaker per upstream base URL.

Errors a client sees (documented in the README): an upstream that cannot be
reached, times out, answers 5xx or responseCode 2/3, or whose circuit is open
→ responseCode 3, HTTP 503 (a cached answer is served stale instead while the
stale bound lasts); an upstream that answers garbage, another handle, or 301,
and loops → responseCode 2 (RC_ERROR), HTTP 500 as the contract maps code 2.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import partial
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from lru import LRU
from yarl import URL

from registry import values as hv
from registry.errors import ClientError, NotResponsible, ServerTooBusy
from registry.handle import Handle, fold
from registry.store import Record, Store
from resolver.breaker import Breaker, State, backoff
from resolver.cache import Clock, Entry
from resolver.config import Config
from resolver.metrics import Metrics
from resolver.pipeline import Stage, encode
from resolver.sites import Sites, walk

VIA_HEADER = "X-Idnode-Via"
MAX_HOPS = 4
"""Node processes a request may pass through before recursion stops."""
ATTEMPTS = 2
"""Tries per upstream request (the second after a jittered back-off)."""
MAX_ANSWER_BYTES = 8 << 20
BREAKER_THRESHOLD = 5
BREAKER_RESET_SECONDS = 30.0
_TOKEN = re.compile(r"[0-9a-f]{1,32}")

VIA: ContextVar[tuple[str, ...]] = ContextVar("idnode_via", default=())
"""The via chain of the request being served (set by ``via_middleware``)."""


class UpstreamUnavailable(ServerTooBusy):
    """The node responsible for the handle could not be reached; try again later."""


class UpstreamInvalid(ClientError):
    """The node responsible for the handle answered something unusable."""

    response_code = 2
    http_status = 500  # the client contract maps responseCode 2 to 500


class RecursionLoop(UpstreamInvalid):
    """The request came back to a node it passed through: recursion loop."""


def parse_via(raw: str) -> tuple[str, ...]:
    """The node ids of an ``X-Idnode-Via`` header (unreadable ones kept as ``?``)."""
    parts = [part.strip() for part in raw.split(",")][: MAX_HOPS + 1]
    return tuple(part if _TOKEN.fullmatch(part) else "?" for part in parts)


@web.middleware
async def via_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Make the request's via chain visible to the pipeline stages it reaches."""
    raw = request.headers.get(VIA_HEADER)
    if raw is None:
        return await handler(request)
    token = VIA.set(parse_via(raw))
    try:
        return await handler(request)
    finally:
        VIA.reset(token)


def _failed(exc: BaseException) -> asyncio.Future[Entry]:
    future: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future


def _settle(out: asyncio.Future[Entry], task: asyncio.Future[Entry]) -> None:
    if out.done():
        if not task.cancelled():
            task.exception()  # seen
        return
    if task.cancelled():
        out.cancel()
    elif task.exception() is not None:
        out.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        out.set_result(task.result())


class LoopGuard:
    """In front of the cache: a request that already passed through this process is refused,
    before it could wait on the very fetch that sent it."""

    def __init__(self, inner: Stage, node_id: str) -> None:
        self.inner = inner
        self.node_id = node_id

    def lookup(self, h: Handle, *, authoritative: bool = False) -> asyncio.Future[Entry]:
        via = VIA.get()
        if via and self.node_id in via:
            loop = RecursionLoop(
                f"the request for {h.text} came back to this node after {len(via)} hops",
                handle=h.text,
            )
            return _failed(loop)
        return self.inner.lookup(h, authoritative=authoritative)


class Referral:
    """Below the cache: what the store is not responsible for goes to a delegation record
    held here or, with recursion on, to the upstream node."""

    def __init__(self, inner: Stage, store: Store, upstream: Upstream | None) -> None:
        self.inner = inner
        self.store = store
        self.upstream = upstream

    def lookup(self, h: Handle, *, authoritative: bool = False) -> asyncio.Future[Entry]:
        below = self.inner.lookup(h, authoritative=authoritative)
        out: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        below.add_done_callback(partial(self._answered, h, VIA.get(), out))
        return out

    def _answered(
        self, h: Handle, via: tuple[str, ...], out: asyncio.Future[Entry], below: Any
    ) -> None:
        if below.cancelled() or not isinstance(below.exception(), NotResponsible):
            _settle(out, below)
            return
        task = asyncio.create_task(self._elsewhere(h, via, below.exception()))
        task.add_done_callback(partial(_settle, out))

    async def _elsewhere(self, h: Handle, via: tuple[str, ...], exc: NotResponsible) -> Entry:
        if h.is_prefix_record:
            for parent in [p for p in walk(h.suffix_key) if p != h.suffix_key]:
                if await self.store.is_homed(parent):  # a delegation this node holds
                    return encode(await self.store.get(h))
        if self.upstream is None:
            raise exc
        return await self.upstream.fetch(h, via)


class Upstream:
    """Asks other nodes over HTTP: one client session, breakers per base URL, TTL clamping."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        node_id: str,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.node_id = node_id
        self.clock = clock
        self.sites = Sites(
            config.upstream_map,
            config.root_url,
            self.query,
            clock=clock,
            stale_for=config.upstream_stale_seconds,
        )
        self._breakers: LRU[str, Breaker] = LRU(1024)
        self._session: aiohttp.ClientSession | None = None
        self._own = _own_addresses(config)
        metrics.circuit_states = self.circuit_states

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:  # made on first use, inside the running loop
            self._session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(),
                connector=aiohttp.TCPConnector(limit=256, ttl_dns_cache=300),
                headers={"Accept": "application/json", "User-Agent": "idnode"},
            )
        return self._session

    def circuit_states(self) -> dict[str, int]:
        counts = {state.value: 0 for state in State}
        for breaker in self._breakers.values():
            counts[breaker.state.value] += 1
        return counts

    async def fetch(self, h: Handle, via: tuple[str, ...]) -> Entry:
        """The entry for ``h`` from the node responsible for it."""
        if len(via) >= MAX_HOPS:
            self.metrics.upstream_requests.labels("invalid").inc()
            raise RecursionLoop(
                f"recursion for {h.text} stopped after {len(via)} hops", handle=h.text
            )
        url = await self.sites.locate(h, via)
        if url is None:
            return self._negative(Entry(None))
        return await self.query(url, h, via)

    async def query(self, base: str, h: Handle, via: tuple[str, ...]) -> Entry:
        """Ask the node at ``base`` for ``h``, with retries behind its circuit breaker."""
        if _address(base) in self._own:
            raise RecursionLoop(f"the upstream for {h.text} is this node itself", handle=h.text)
        breaker = self._breakers.get(base)
        if breaker is None:
            breaker = self._breakers[base] = Breaker(
                threshold=BREAKER_THRESHOLD, reset_after=BREAKER_RESET_SECONDS, clock=self.clock
            )
        for attempt in range(ATTEMPTS):
            if not breaker.allow():
                self.metrics.upstream_requests.labels("refused").inc()
                raise UpstreamUnavailable(
                    f"the node serving {h.prefix} is failing (circuit open)", handle=h.text
                )
            try:
                entry = await self._timed(base, h, via)
            except UpstreamUnavailable:
                breaker.failure()
                if attempt + 1 == ATTEMPTS or breaker.state is not State.CLOSED:
                    raise
                await asyncio.sleep(backoff(attempt))
                continue
            except UpstreamInvalid:
                breaker.failure()
                raise
            breaker.success()
            return entry
        raise AssertionError("unreachable")  # pragma: no cover

    async def _timed(self, base: str, h: Handle, via: tuple[str, ...]) -> Entry:
        started = time.perf_counter()
        try:
            entry = await self._get(base, h, via)
        except UpstreamUnavailable:
            self.metrics.upstream_requests.labels("unavailable").inc()
            raise
        except UpstreamInvalid:
            self.metrics.upstream_requests.labels("invalid").inc()
            raise
        finally:
            self.metrics.upstream_duration.observe(time.perf_counter() - started)
        self.metrics.upstream_requests.labels("ok" if entry.positive else "not_found").inc()
        return entry

    async def _get(self, base: str, h: Handle, via: tuple[str, ...]) -> Entry:
        target = URL(f"{base}/api/handles/{quote(h.text, safe='/')}", encoded=True)
        headers = {VIA_HEADER: ",".join((*via, self.node_id))}
        try:
            async with asyncio.timeout(self.config.upstream_timeout):
                async with self.session.get(
                    target, headers=headers, allow_redirects=False
                ) as response:
                    body = await response.content.read(MAX_ANSWER_BYTES + 1)
                    status = response.status
        except TimeoutError:
            raise UpstreamUnavailable(
                f"the node serving {h.prefix} did not answer within"
                f" {self.config.upstream_timeout:g} s",
                handle=h.text,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamUnavailable(
                f"the node serving {h.prefix} cannot be reached ({type(exc).__name__})",
                handle=h.text,
            ) from None
        return self._entry(h, interpret(h, status, body))

    def _entry(self, h: Handle, entry: Entry) -> Entry:
        if not entry.positive:
            return self._negative(entry)
        low, high = self.config.upstream_ttl_min, self.config.upstream_ttl_max
        entry.ttl = float(min(max(entry.max_age, low), high))
        entry.stale_for = self.config.upstream_stale_seconds
        return entry

    def _negative(self, entry: Entry) -> Entry:
        entry.ttl = float(self.config.upstream_negative_ttl)
        entry.stale_for = self.config.upstream_stale_seconds
        return entry


Address = tuple[str, str, int | None]


def _address(base: str) -> Address:
    url = URL(base)
    return (url.scheme, (url.host or "").lower(), url.port)


def _own_addresses(config: Config) -> set[Address]:
    """The base URLs that reach this node: an upstream there would be a loop."""
    hosts = {config.host}
    if config.host in ("0.0.0.0", "::", "127.0.0.1", "localhost"):
        hosts |= {"127.0.0.1", "localhost", "::1"}
    own: set[Address] = {("http", host, config.port) for host in hosts}
    if config.tls:
        own |= {("https", host, config.tls_port) for host in hosts}
    if config.advertise_url:
        own.add(_address(config.advertise_url))
    return own


def interpret(h: Handle, status: int, body: bytes) -> Entry:
    """The entry an upstream's answer to ``GET /api/handles/{h}`` stands for."""
    where = f"the node serving {h.prefix}"
    refused = _refusal(body) if status == UpstreamInvalid.http_status else None
    if refused is not None:  # its own upstream failed it, or a loop: say why
        raise UpstreamInvalid(f"{where} answered: {refused}", handle=h.text)
    if status >= 500 or status == 429:
        raise UpstreamUnavailable(f"{where} answered HTTP {status}", handle=h.text)
    if len(body) > MAX_ANSWER_BYTES:
        raise UpstreamInvalid(f"{where} answered more than {MAX_ANSWER_BYTES} bytes")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamInvalid(
            f"{where} answered something that is not JSON (HTTP {status})", handle=h.text
        ) from None
    code = doc.get("responseCode") if isinstance(doc, dict) else None
    if type(code) is not int:
        raise UpstreamInvalid(f"{where} answered JSON without a responseCode", handle=h.text)
    if code in (2, 3):
        raise UpstreamUnavailable(f"{where} answered responseCode {code}", handle=h.text)
    answered = doc.get("handle")
    if code in (1, 100, 200) and (not isinstance(answered, str) or fold(answered) != h.key):
        raise UpstreamInvalid(
            f"{where} answered for {str(answered)[:100]!r} when asked for {h.text}",
            handle=h.text,
        )
    if code == 100 or (code == 301 and h.is_prefix_record):
        return Entry(None)  # a root not responsible for a prefix record knows no such prefix
    if code == 200:
        return encode(Record.of(h.text, ()))
    if code == 1:
        return encode(Record.of(h.text, _values(h, doc.get("values"), where)))
    raise UpstreamInvalid(f"{where} answered responseCode {code}", handle=h.text)


def _refusal(body: bytes) -> str | None:
    """The message of another node's ``UpstreamInvalid`` (responseCode 2 with a message other
    than a plain internal error's), shortened; None for any other answer."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or doc.get("responseCode") != 2:
        return None
    message = doc.get("message")
    if not isinstance(message, str) or message == "internal server error":
        return None
    return message[:300]


def _values(h: Handle, raw: Any, where: str) -> list[hv.Value]:
    """The public values of an upstream answer, checked by the node's own value parser."""
    if not isinstance(raw, list):
        raise UpstreamInvalid(f"{where} answered values that are not an array", handle=h.text)
    try:
        hv.check_count(len(raw))
        values = []
        for item in raw:
            stamp = item.get("timestamp", "") if isinstance(item, dict) else ""
            if not isinstance(stamp, str):
                raise ClientError("a timestamp is not a string")
            values.append(hv.parse_value(item, timestamp=stamp[:64]))
    except ClientError as exc:
        raise UpstreamInvalid(f"{where} answered an invalid value: {exc.message}") from None
    if len({v.index for v in values}) != len(values):
        raise UpstreamInvalid(f"{where} answered two values at one index", handle=h.text)
    return [v for v in values if v.public_read]


class Recursion:
    """What recursion and referral add to a node's pipeline, built from its configuration."""

    def __init__(
        self, config: Config, store: Store, metrics: Metrics, *, clock: Clock = time.monotonic
    ) -> None:
        self.node_id = secrets.token_hex(8)
        """This process's id in via chains (a process, not a node: see LoopGuard)."""
        self.store = store
        self.upstream = (
            Upstream(config, metrics, self.node_id, clock=clock) if config.recursion else None
        )

    def below_cache(self, stage: Stage) -> Stage:
        return Referral(stage, self.store, self.upstream)

    def above_cache(self, stage: Stage) -> Stage:
        return stage if self.upstream is None else LoopGuard(stage, self.node_id)

    async def close(self) -> None:
        if self.upstream is not None:
            await self.upstream.close()
