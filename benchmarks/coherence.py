"""Coherence across workers: how long after a write returns until no worker answers the old record.

Usage: python -m benchmarks.coherence URL IDENTITY SECRET [--writes N]

For each write, the record is first cached in every worker (many fresh
connections, which the kernel spreads over the workers), then changed; from the
moment the write's answer arrives, fresh connections resolve it until 20 in a
row show the new value. The time of the first of those 20 is the write's
coherence delay. Prints p50, p99 and max over the writes.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import statistics
import time
from urllib.parse import quote, urlsplit

HANDLE_SUFFIX = "COHERENCE-PROBE"


def _request(
    host: str, port: int, method: str, path: str, body: bytes | None = None, auth: str = ""
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    headers = {"Connection": "close"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    if auth:
        headers["Authorization"] = auth
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def measure(url: str, identity: str, secret: str, writes: int) -> list[float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    prefix = identity.split("/", 1)[1]
    path = f"/api/handles/{prefix}/{HANDLE_SUFFIX}"
    token = base64.b64encode(f"{quote(identity, safe='')}:{secret}".encode()).decode()
    auth = f"Basic {token}"
    delays = []
    for n in range(writes):
        old, new = f"https://example.com/{n}", f"https://example.com/{n}-new"
        for value in (old, new):
            body = json.dumps([{"index": 1, "type": "URL", "data": value}]).encode()
            if value == new:
                for _ in range(16):  # cache the old record in every worker
                    _request(host, port, "GET", path)
            status, _ = _request(host, port, "PUT", path, body, auth)
            assert status in (200, 201), status
        returned = time.perf_counter()
        streak, first_new = 0, 0.0
        while streak < 20:
            _, data = _request(host, port, "GET", path)
            if new.encode() in data:
                if streak == 0:
                    first_new = time.perf_counter()
                streak += 1
            else:
                streak = 0
        delays.append(max(0.0, first_new - returned))
    return delays


def summary(delays: list[float]) -> str:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    p50 = statistics.median(ordered)
    return (
        f"coherence delay over {len(delays)} writes: p50 {p50 * 1000:.2f} ms,"
        f" p99 {p99 * 1000:.2f} ms, max {ordered[-1] * 1000:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("identity", help="e.g. 300:0.NA/88.118.8")
    parser.add_argument("secret")
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    print(summary(measure(args.url, args.identity, args.secret, args.writes)))


if __name__ == "__main__":
    main()
