"""The one configuration object, read at start-up from the environment and a TOML file.

Every setting has a default and a reason. ``IDNODE_CONFIG`` may name a TOML file
whose keys are the setting names of this module (``port = 8000``,
``tls_cert = "/etc/idnode/cert.pem"``); an environment variable overrides the
file, the file overrides the default. An invalid value stops start-up with one
line naming the setting and where it came from (``IDNODE_PORT: must be an
integer from 1 to 65535``, ``port in /etc/idnode.toml: …``).
"""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.name
from yarl import URL

from registry.errors import ConfigError, InvalidHandle
from registry.handle import check_prefix

T = TypeVar("T")
CONFIG_ENV = "IDNODE_CONFIG"
"""Names an optional TOML file of settings, under the environment variables."""


@dataclass(frozen=True, slots=True)
class Setting:
    env: str
    default: str | None
    help: str


SETTINGS: dict[str, Setting] = {
    "host": Setting("IDNODE_HOST", "127.0.0.1", "address the HTTP server listens on"),
    "port": Setting("IDNODE_PORT", "8000", "TCP port of the HTTP server"),
    "data_dir": Setting(
        "IDNODE_DATA_DIR", ".data", "where the embedded PostgreSQL and generated secrets live"
    ),
    "database_url": Setting(
        "DATABASE_URL", None, "PostgreSQL server to use; unset starts the embedded one"
    ),
    "bootstrap_prefix": Setting(
        "IDNODE_BOOTSTRAP_PREFIX", None, "prefix homed on first start when not yet homed"
    ),
    "bootstrap_secret": Setting(
        "IDNODE_BOOTSTRAP_SECRET",
        None,
        "admin secret of the bootstrap prefix; unset generates one into DATA_DIR/bootstrap-secret",
    ),
    "workers": Setting(
        "IDNODE_WORKERS", None, "serving processes sharing the port (default: the core count)"
    ),
    "max_body_bytes": Setting(
        "IDNODE_MAX_BODY_BYTES", "1048576", "largest request body accepted, in bytes"
    ),
    "db_pool_size": Setting(
        "IDNODE_DB_POOL_SIZE", "10", "most PostgreSQL connections one process opens"
    ),
    "log_level": Setting("IDNODE_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    "log_format": Setting(
        "IDNODE_LOG_FORMAT", "auto", "json, text, or auto (text on a terminal, JSON otherwise)"
    ),
    "access_log_sample": Setting(
        "IDNODE_ACCESS_LOG_SAMPLE",
        "0",
        "share of requests (0 to 1) written to the access log (logger idnode.access)",
    ),
    "cache_max_entries": Setting(
        "IDNODE_CACHE_MAX_ENTRIES", "100000", "resolutions cached per process (0 disables)"
    ),
    "cache_max_age": Setting(
        "IDNODE_CACHE_MAX_AGE",
        "3600",
        "ceiling in seconds on keeping a cached record (it is dropped on change anyway)",
    ),
    "cache_negative_ttl": Setting(
        "IDNODE_CACHE_NEGATIVE_TTL", "60", "seconds a 'not found' answer is cached"
    ),
    "cache_stale_seconds": Setting(
        "IDNODE_CACHE_STALE_SECONDS",
        "300",
        "how long past freshness a cached record is served while PostgreSQL is down",
    ),
    "tls_cert": Setting(
        "IDNODE_TLS_CERT", None, "PEM certificate (chain) for HTTPS; with IDNODE_TLS_KEY enables it"
    ),
    "tls_key": Setting("IDNODE_TLS_KEY", None, "PEM private key of IDNODE_TLS_CERT"),
    "tls_port": Setting("IDNODE_TLS_PORT", "8443", "TCP port of the HTTPS server"),
    "dev_mode": Setting(
        "IDNODE_DEV_MODE",
        "false",
        "with TLS on, still accept writes and credentials over plain HTTP from loopback",
    ),
    "node_key": Setting(
        "IDNODE_NODE_KEY",
        None,
        "the node's RSA signing key (PEM); created on first start (default DATA_DIR/keys/node.pem)",
    ),
    "sealing_key": Setting(
        "IDNODE_SEALING_KEY",
        None,
        "key sealing HS_SECKEY secrets at rest; created on first start"
        " (default DATA_DIR/keys/sealing.key)",
    ),
    "session_idle_seconds": Setting(
        "IDNODE_SESSION_IDLE_SECONDS", "1800", "an unused session expires after this many seconds"
    ),
    "read_rate": Setting(
        "IDNODE_READ_RATE", "1000", "reads per second per client address (0: unlimited)"
    ),
    "read_burst": Setting("IDNODE_READ_BURST", "2000", "reads a client address may burst"),
    "write_rate": Setting(
        "IDNODE_WRITE_RATE",
        "50",
        "writes and session requests per second per client address and per identity (0: unlimited)",
    ),
    "write_burst": Setting("IDNODE_WRITE_BURST", "100", "writes a client or identity may burst"),
    "auth_backoff_max": Setting(
        "IDNODE_AUTH_BACKOFF_MAX",
        "60",
        "ceiling in seconds of the growing wait after repeated authentication failures",
    ),
    "header_timeout": Setting(
        "IDNODE_HEADER_TIMEOUT",
        "10",
        "seconds a client may take to send a request head once it started one",
    ),
    "body_timeout": Setting(
        "IDNODE_BODY_TIMEOUT",
        "30",
        "seconds a client may take to send a request body (a batch: between two parts of it)",
    ),
    "shutdown_grace": Setting(
        "IDNODE_SHUTDOWN_GRACE",
        "10",
        "seconds SIGTERM waits for in-flight requests before cutting them off (rolled back)",
    ),
    "batch_max_items": Setting(
        "IDNODE_BATCH_MAX_ITEMS", "1000000", "most operations one POST /api/batch may carry"
    ),
    "batch_max_bytes": Setting(
        "IDNODE_BATCH_MAX_BYTES", "4294967296", "largest body of one POST /api/batch, in bytes"
    ),
    # audit log
    "audit_key": Setting(
        "IDNODE_AUDIT_KEY",
        None,
        "the Ed25519 key signing the audit log's checkpoints (PEM); created on first start"
        " (default DATA_DIR/keys/audit.pem)",
    ),
    "checkpoint_entries": Setting(
        "IDNODE_CHECKPOINT_ENTRIES", "1000", "sign a checkpoint after this many new audit entries"
    ),
    "checkpoint_seconds": Setting(
        "IDNODE_CHECKPOINT_SECONDS",
        "60",
        "sign a checkpoint of new audit entries at least this often (0: only by count or demand)",
    ),
    # DNS front-end (resolver/dns_front.py)
    "dns_port": Setting(
        "IDNODE_DNS_PORT", "0", "UDP and TCP port of the DNS front-end (0: no DNS front-end)"
    ),
    "dns_host": Setting(
        "IDNODE_DNS_HOST", None, "address the DNS front-end listens on (default: IDNODE_HOST)"
    ),
    "dns_zone": Setting(
        "IDNODE_DNS_ZONE", "id.example.", "DNS zone whose names stand for the node's handles"
    ),
    "dns_nameserver": Setting(
        "IDNODE_DNS_NAMESERVER", None, "host name in the zone's SOA and NS (default: ns.<zone>)"
    ),
    # recursion and referral (resolver/upstream.py)
    "recursion": Setting(
        "IDNODE_RECURSION",
        "false",
        "resolve handles of prefixes not homed here through other nodes (off: answer 301)",
    ),
    "upstreams": Setting(
        "IDNODE_UPSTREAMS",
        None,
        "static map of prefixes to node base URLs, e.g. 88.200=http://10.0.0.5:8000,88.300=https://n3",
    ),
    "root_url": Setting(
        "IDNODE_ROOT_URL",
        None,
        "base URL of the top-level node asked for 0.NA/<prefix> site records",
    ),
    "upstream_timeout": Setting(
        "IDNODE_UPSTREAM_TIMEOUT", "2", "seconds one request to another node may take"
    ),
    "upstream_ttl_min": Setting(
        "IDNODE_UPSTREAM_TTL_MIN", "5", "least seconds a record from another node is cached"
    ),
    "upstream_ttl_max": Setting(
        "IDNODE_UPSTREAM_TTL_MAX", "3600", "most seconds a record from another node is cached"
    ),
    "upstream_negative_ttl": Setting(
        "IDNODE_UPSTREAM_NEGATIVE_TTL", "30", "seconds another node's 'not found' is cached"
    ),
    "upstream_stale_seconds": Setting(
        "IDNODE_UPSTREAM_STALE_SECONDS",
        "3600",
        "how long past its TTL a record from another node is served while that node is down",
    ),
    "advertise_url": Setting(
        "IDNODE_ADVERTISE_URL",
        None,
        "base URL other nodes use to reach this one, published in HS_SITE of homed prefixes",
    ),
    # The Handle protocol front-end (resolver/handle_server.py)
    "handle_port": Setting(
        "IDNODE_HANDLE_PORT", "2641", "UDP and TCP port of the Handle protocol (0 turns it off)"
    ),
    "handle_host": Setting(
        "IDNODE_HANDLE_HOST", None, "address the Handle protocol listens on (default: IDNODE_HOST)"
    ),
    "handle_max_inflight": Setting(
        "IDNODE_HANDLE_MAX_INFLIGHT",
        "1000",
        "Handle-protocol lookups one process waits on at once; more are answered responseCode 3",
    ),
    "handle_idle_timeout": Setting(
        "IDNODE_HANDLE_IDLE_TIMEOUT",
        "30",
        "seconds a quiet Handle-protocol TCP connection stays open",
    ),
}


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path(".data")
    database_url: str | None = None
    bootstrap_prefix: str | None = None
    bootstrap_secret: str | None = None
    workers: int = 1
    max_body_bytes: int = 1048576
    db_pool_size: int = 10
    log_level: str = "INFO"
    log_format: str = "auto"
    access_log_sample: float = 0.0
    cache_max_entries: int = 100000
    cache_max_age: int = 3600
    cache_negative_ttl: int = 60
    cache_stale_seconds: int = 300
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_port: int = 8443
    dev_mode: bool = False
    node_key: Path | None = None
    sealing_key: Path | None = None
    session_idle_seconds: int = 1800
    read_rate: float = 1000.0
    read_burst: float = 2000.0
    write_rate: float = 50.0
    write_burst: float = 100.0
    auth_backoff_max: float = 60.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    shutdown_grace: float = 10.0
    batch_max_items: int = 1000000
    batch_max_bytes: int = 4294967296
    audit_key: Path | None = None
    checkpoint_entries: int = 1000
    checkpoint_seconds: float = 60.0
    dns_port: int = 0
    dns_host: str | None = None
    dns_zone: str = "id.example."
    dns_nameserver: str | None = None
    recursion: bool = False
    upstreams: str | None = None
    root_url: str | None = None
    upstream_timeout: float = 2.0
    upstream_ttl_min: int = 5
    upstream_ttl_max: int = 3600
    upstream_negative_ttl: int = 30
    upstream_stale_seconds: int = 3600
    advertise_url: str | None = None
    handle_port: int = 2641
    handle_host: str | None = None
    handle_max_inflight: int = 1000
    handle_idle_timeout: float = 30.0
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each setting that is not at its default came from."""

    @property
    def upstream_map(self) -> dict[str, str]:
        """IDNODE_UPSTREAMS as {prefix: base URL}."""
        return _upstream_map(self.upstreams or "")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def node_key_path(self) -> Path:
        return self.node_key or self.data_dir / "keys" / "node.pem"

    @property
    def sealing_key_path(self) -> Path:
        return self.sealing_key or self.data_dir / "keys" / "sealing.key"

    @property
    def audit_key_path(self) -> Path:
        return self.audit_key or self.data_dir / "keys" / "audit.pem"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """Read every setting from ``env`` (default: the process environment) and the file
        it names in ``IDNODE_CONFIG``."""
        env = os.environ if env is None else env
        sources: dict[str, str] = {}
        raw: dict[str, str | None] = {name: s.default for name, s in SETTINGS.items()}
        path = env.get(CONFIG_ENV)
        if path:
            for name, text in _read_file(Path(path)).items():
                raw[name], sources[name] = text, f"{name} in {path}"
        for name, s in SETTINGS.items():
            if env.get(s.env):
                raw[name], sources[name] = env[s.env], s.env
        return cls._from_raw(raw, sources)

    @classmethod
    def _from_raw(cls, raw: Mapping[str, str | None], sources: dict[str, str]) -> Config:
        parse = functools.partial(_parse, sources=sources)
        values: dict[str, Any] = {
            "host": parse("host", raw, str, _non_empty),
            "port": parse("port", raw, int, _between(1, 65535)),
            "data_dir": parse("data_dir", raw, Path, _non_empty),
            "database_url": parse("database_url", raw, str, _postgres_url),
            "bootstrap_prefix": parse("bootstrap_prefix", raw, str, _prefix),
            "bootstrap_secret": raw["bootstrap_secret"],
            "workers": parse("workers", raw, int, _between(1, 256)) or (os.cpu_count() or 1),
            "max_body_bytes": parse("max_body_bytes", raw, int, _between(1024, 2**31)),
            "db_pool_size": parse("db_pool_size", raw, int, _between(1, 1000)),
            "log_level": parse("log_level", raw, str.upper, _log_level),
            "log_format": parse("log_format", raw, str.lower, _one_of("auto", "json", "text")),
            "access_log_sample": parse("access_log_sample", raw, float, _fraction),
            "cache_max_entries": parse("cache_max_entries", raw, int, _between(0, 100_000_000)),
            "cache_max_age": parse("cache_max_age", raw, int, _between(1, 86400 * 365)),
            "cache_negative_ttl": parse("cache_negative_ttl", raw, int, _between(0, 86400)),
            "cache_stale_seconds": parse("cache_stale_seconds", raw, int, _between(0, 86400 * 7)),
            "tls_cert": parse("tls_cert", raw, Path, _readable_file),
            "tls_key": parse("tls_key", raw, Path, _readable_file),
            "tls_port": parse("tls_port", raw, int, _between(1, 65535)),
            "dev_mode": parse("dev_mode", raw, _boolean, _any),
            "node_key": parse("node_key", raw, Path, _non_empty),
            "sealing_key": parse("sealing_key", raw, Path, _non_empty),
            "session_idle_seconds": parse(
                "session_idle_seconds", raw, int, _between(1, 86400 * 30)
            ),
        }
        for name in ("read_rate", "read_burst", "write_rate", "write_burst"):
            values[name] = parse(name, raw, float, _at_least(0.0))
        values["auth_backoff_max"] = parse("auth_backoff_max", raw, float, _within(0.0, 900.0))
        values["header_timeout"] = parse("header_timeout", raw, float, _at_least(0.1))
        values["body_timeout"] = parse("body_timeout", raw, float, _at_least(0.1))
        values["shutdown_grace"] = parse("shutdown_grace", raw, float, _within(0.0, 3600.0))
        values["batch_max_items"] = parse("batch_max_items", raw, int, _between(1, 10**9))
        values["batch_max_bytes"] = parse("batch_max_bytes", raw, int, _between(1024, 2**50))
        values["audit_key"] = parse("audit_key", raw, Path, _non_empty)
        values["checkpoint_entries"] = parse("checkpoint_entries", raw, int, _between(1, 10**9))
        values["checkpoint_seconds"] = parse(
            "checkpoint_seconds", raw, float, _within(0.0, 86400.0 * 30)
        )
        values["dns_port"] = parse("dns_port", raw, int, _between(0, 65535))
        values["dns_host"] = parse("dns_host", raw, str, _non_empty)
        values["dns_zone"] = parse("dns_zone", raw, _dns_name, _any)
        values["dns_nameserver"] = parse("dns_nameserver", raw, _dns_name, _any)
        values.update(_recursion_values(raw, parse))
        values["handle_port"] = parse("handle_port", raw, int, _between(0, 65535))
        values["handle_host"] = parse("handle_host", raw, str, _non_empty)
        values["handle_max_inflight"] = parse("handle_max_inflight", raw, int, _between(1, 10**6))
        values["handle_idle_timeout"] = parse("handle_idle_timeout", raw, float, _within(0.1, 3600))
        if (values["tls_cert"] is None) != (values["tls_key"] is None):
            raise ConfigError("IDNODE_TLS_CERT and IDNODE_TLS_KEY: set both or neither")
        return cls(**values, sources=dict(sources))

    def describe(self) -> list[tuple[str, str, str, str]]:
        """(environment variable, effective value, source, help) for every setting; secrets
        redacted. The source is ``default``, the variable's name, or the key and file."""
        rows = []
        for f in fields(self):
            if f.name == "sources":
                continue
            setting = SETTINGS[f.name]
            value = getattr(self, f.name)
            shown = "(unset)" if value is None else str(value)
            if value is not None and ("secret" in f.name or f.name == "database_url"):
                shown = "(set, redacted)"
            source = self.sources.get(f.name, "default")
            rows.append((setting.env, shown, source, setting.help))
        return rows


def _read_file(path: Path) -> dict[str, str]:
    """The settings of a TOML file as text, to be checked like environment values."""
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{CONFIG_ENV}: cannot read {path} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{CONFIG_ENV}: {path} is not valid TOML ({exc})") from None
    found = {}
    for key, value in document.items():
        if key not in SETTINGS or key == "sources":
            raise ConfigError(f"{CONFIG_ENV}: unknown setting {key!r} in {path}")
        if isinstance(value, bool):
            found[key] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            found[key] = str(value)
        else:
            raise ConfigError(f"{key} in {path}: must be a string, number or boolean")
    return found


def _parse(
    name: str,
    raw: Mapping[str, str | None],
    convert: Callable[[str], T],
    check: Callable[[T], str],
    *,
    sources: Mapping[str, str],
) -> T | None:
    text = raw[name]
    if text is None:
        return None
    env = sources.get(name, SETTINGS[name].env)
    try:
        value = convert(text.strip())
    except ValueError:
        raise ConfigError(f"{env}: cannot read {text!r} as {convert.__name__}") from None
    problem = check(value)
    if problem:
        raise ConfigError(f"{env}: {problem}, got {text!r}")
    return value


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


_boolean.__name__ = "true or false"


def _at_least(low: float) -> Callable[[float], str]:
    def check(value: float) -> str:
        return "" if value >= low and value < float("inf") else f"must be a number >= {low:g}"

    return check


def _within(low: float, high: float) -> Callable[[float], str]:
    def check(value: float) -> str:
        return "" if low <= value <= high else f"must be a number from {low:g} to {high:g}"

    return check


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        return "" if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _fraction(value: float) -> str:
    return "" if 0.0 <= value <= 1.0 else "must be a number from 0 to 1"


def _any(value: object) -> str:
    return ""


def _readable_file(value: Path) -> str:
    return "" if value.is_file() and os.access(value, os.R_OK) else "must be a readable file"


def _non_empty(value: object) -> str:
    return "" if str(value) else "must not be empty"


def _between(low: int, high: int) -> Callable[[int], str]:
    def check(value: int) -> str:
        return "" if low <= value <= high else f"must be an integer from {low} to {high}"

    return check


def _postgres_url(value: str) -> str:
    ok = value.startswith(("postgresql://", "postgres://"))
    return "" if ok else "must be a postgresql:// URL"


def _prefix(value: str) -> str:
    try:
        check_prefix(value)
    except InvalidHandle as exc:
        return f"not a valid prefix ({exc.message})"
    return ""


def _dns_name(text: str) -> str:
    """A DNS name in its absolute text form (``id.example.``); ValueError if it is none."""
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ValueError(str(exc)) from None
    if name == dns.name.root:
        raise ValueError("the root")
    return name.to_text()


_dns_name.__name__ = "a DNS name"


def _recursion_values(raw: Mapping[str, str | None], parse: Any) -> dict[str, Any]:
    """The recursion settings, checked (recursion: …)."""
    values = {
        "recursion": parse("recursion", raw, _boolean, _any),
        "upstreams": parse("upstreams", raw, str, _upstreams),
        "root_url": parse("root_url", raw, str, check_base_url),
        "upstream_timeout": parse("upstream_timeout", raw, float, _within(0.01, 60.0)),
        "upstream_ttl_min": parse("upstream_ttl_min", raw, int, _between(0, 86400)),
        "upstream_ttl_max": parse("upstream_ttl_max", raw, int, _between(1, 86400 * 7)),
        "upstream_negative_ttl": parse("upstream_negative_ttl", raw, int, _between(0, 3600)),
        "upstream_stale_seconds": parse("upstream_stale_seconds", raw, int, _between(0, 86400 * 7)),
        "advertise_url": parse("advertise_url", raw, str, check_base_url),
    }
    if values["upstream_ttl_min"] > values["upstream_ttl_max"]:
        raise ConfigError(
            "IDNODE_UPSTREAM_TTL_MIN: must not be larger than IDNODE_UPSTREAM_TTL_MAX"
        )
    return values


def check_base_url(value: str) -> str:
    """An http(s) base URL with a host and nothing after the path."""
    try:
        url = URL(value)
    except ValueError:
        return "must be an http:// or https:// URL"
    if url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
        return "must be an http:// or https:// URL with a host and no query"
    return ""


def _upstream_map(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        prefix, equals, url = (piece.strip() for piece in item.partition("="))
        if not equals:
            raise ValueError(f"{item!r} is not PREFIX=URL")
        check_prefix(prefix)
        if check_base_url(url):
            raise ValueError(f"{url!r} ({check_base_url(url)})")
        found[prefix] = url.rstrip("/")
    return found


def _upstreams(value: str) -> str:
    try:
        _upstream_map(value)
    except InvalidHandle as exc:
        return f"not a map of PREFIX=URL ({exc.message})"
    except ValueError as exc:
        return f"not a map of PREFIX=URL: {exc}"
    return ""


def _log_level(value: str) -> str:
    ok = value in ("DEBUG", "INFO", "WARNING", "ERROR")
    return "" if ok else "must be DEBUG, INFO, WARNING or ERROR"
