"""Running wrk pinned to core 0 and reading its report."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.system import pinned

THREADS = 1
CONNECTIONS = 64
CLIENT_CORE = 0

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_PERCENTILE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_RATE_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL_RE = re.compile(r"^\s*(\d+) requests in ", re.M)
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_RE = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]
    output: str

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def parse(output: str) -> WrkResult:
    """Read requests/s, the 50th and 99th latency percentiles and error counts."""
    rate = _RATE_RE.search(output)
    if rate is None:
        raise ValueError(f"no Requests/sec line in wrk output:\n{output}")
    percentiles = {
        float(p): float(value) * _UNITS[unit] for p, value, unit in _PERCENTILE_RE.findall(output)
    }
    total = _TOTAL_RE.search(output)
    non_2xx = _NON_2XX_RE.search(output)
    sockets = _SOCKET_RE.search(output)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
        if sockets
        else {}
    )
    return WrkResult(
        requests_per_second=float(rate.group(1)),
        p50_ms=percentiles.get(50.0, float("nan")),
        p99_ms=percentiles.get(99.0, float("nan")),
        requests=int(total.group(1)) if total else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors={k: v for k, v in socket_errors.items() if v},
        output=output,
    )


def command(
    url: str, seconds: int, script: Path | None = None, args: Sequence[object] = ()
) -> list[str]:
    argv = [
        "wrk",
        f"-t{THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--latency",
    ]
    if script is not None:
        argv += ["-s", str(script)]
    argv.append(url)
    if args:
        argv += ["--", *map(str, args)]
    return pinned(CLIENT_CORE, argv)


def run(
    url: str, seconds: int, script: Path | None = None, args: Sequence[object] = ()
) -> WrkResult:
    """Run wrk against ``url`` for ``seconds``; raise when it fails."""
    argv = command(url, seconds, script, args)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return parse(done.stdout)
