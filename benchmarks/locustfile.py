"""A realistic load for operators: Zipf reads, some misses, a few registrations.

Each simulated client mostly resolves ``88.118.8/P<n>`` with ``n`` drawn from
Zipf(0.9) over the seeded identifiers (``make bench`` seeds 1,000,000 of them),
asks for unknown identifiers about 5 % of the time (404 is the right answer and
counts as a success), and now and then registers a new identifier with PUT,
authenticated with HTTP Basic as the prefix admin.

locust is not a dependency of idnode; run it from its own virtual environment::

    python3 -m venv /tmp/locust && /tmp/locust/bin/pip install locust
    IDNODE_BENCH_SECRET=bench-secret /tmp/locust/bin/locust -f benchmarks/locustfile.py \\
        --headless --users 200 --spawn-rate 50 --run-time 2m \\
        --host http://127.0.0.1:8000 --csv /tmp/idnode-locust --only-summary

Add ``--processes -1`` to use every core (one locust process reaches only
~2,000-3,000 requests/s; use wrk, ``make bench``, for ceilings).

Environment:

- ``IDNODE_BENCH_IDENTITY``: admin identity for registrations (default
  ``300:0.NA/88.118.8``; sent percent-encoded, as Handle clients do).
- ``IDNODE_BENCH_SECRET``: its secret; without it no registrations are sent
  (the benchmark database made by ``make bench`` uses ``bench-secret``).
- ``IDNODE_BENCH_IDENTIFIERS``: how many ``P<n>`` identifiers exist (default 1000000).
"""

from __future__ import annotations

import base64
import bisect
import itertools
import os
import random
import uuid
from array import array
from urllib.parse import quote

from locust import FastHttpUser, between, task

PREFIX = "88.118.8"
LETTER = "P"
WIDTH = 7
EXPONENT = 0.9
IDENTIFIERS = int(os.environ.get("IDNODE_BENCH_IDENTIFIERS", "1000000"))
IDENTITY = os.environ.get("IDNODE_BENCH_IDENTITY", f"300:0.NA/{PREFIX}")
SECRET = os.environ.get("IDNODE_BENCH_SECRET", "")


def _cumulative(n: int, exponent: float) -> array[float]:
    return array("d", itertools.accumulate(map(pow, range(1, n + 1), itertools.repeat(-exponent))))


_CDF = _cumulative(IDENTIFIERS, EXPONENT)


def zipf_id() -> int:
    """An identifier number, rank r with probability ∝ r^-0.9, ranks scattered over ids."""
    rank = min(bisect.bisect_right(_CDF, random.random() * _CDF[-1]), IDENTIFIERS - 1)
    return rank * 7919 % IDENTIFIERS


def basic_auth(identity: str, secret: str) -> str:
    token = base64.b64encode(f"{quote(identity, safe='')}:{secret}".encode()).decode()
    return f"Basic {token}"


class Resolver(FastHttpUser):
    wait_time = between(0.0, 0.05)

    @task(95)
    def resolve(self) -> None:
        n = zipf_id()
        self.client.get(f"/api/handles/{PREFIX}/{LETTER}{n:0{WIDTH}d}", name="/api/handles/[P<n>]")

    @task(5)
    def resolve_unknown(self) -> None:
        path = f"/api/handles/{PREFIX}/UNKNOWN-{uuid.uuid4().hex[:12]}"
        with self.client.get(path, name="/api/handles/[unknown]", catch_response=True) as resp:
            if resp.status_code == 404:
                resp.success()
            else:
                resp.failure(f"expected 404 for an unknown identifier, got {resp.status_code}")

    @task(1)
    def register(self) -> None:
        if not SECRET:
            return
        suffix = f"LOCUST-{uuid.uuid4().hex[:16]}"
        body = {
            "values": [
                {"index": 1, "type": "URL", "data": f"https://products.example.com/p/{suffix}"},
                {"index": 2, "type": "EMAIL", "data": "quality@example.com"},
                {"index": 3, "type": "MODEL", "data": "JXDY-2106"},
            ]
        }
        self.client.put(
            f"/api/handles/{PREFIX}/{suffix}?overwrite=false",
            json=body,
            headers={"Authorization": basic_auth(IDENTITY, SECRET)},
            name="/api/handles/[register]",
        )
