"""A real Prometheus scraping a real node and evaluating the real alert rules.

``idnode serve`` runs with two worker processes (``/metrics`` totals every worker's counts,
whichever answers the scrape); Debian's ``prometheus`` (installed once when missing and
possible, else skipped) scrapes it every second as the job ``idnode`` of
deploy/prometheus/prometheus.yml, with a verbatim copy of deploy/prometheus/rules.yml plus one
test-only rule in a file of its own. The test checks what Prometheus itself sees: the target
up, the request counts the test caused, the LISTEN gauge summed over both workers, every real
rule evaluated without error, the test-only alert firing and IdnodeDown quiet while the node
is up, then ``up`` 0 and IdnodeDown pending once the node is stopped.
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
import yaml

from tests.conftest import URL_VALUE, Tenant, free_port, served
from tests.test_deploy import INSTALL_TIMEOUT, debian_tool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
JOB = "idnode"  # the job the real rules select (job="idnode")
TEST_ALERT = "IdnodeTestRequestsSeen"
WAIT = 30.0
"""Longest wait for Prometheus to see something (it scrapes and evaluates every second)."""
RESOLVED = 5  # 200s caused on /api/handles/<handle>
MISSING = 3  # 404s caused on /api/handles/<absent handle>
PREFIX = "88.170.1"
"""This module's own prefix range: conftest's ``new_prefix`` counter lives in another copy of
conftest when imported as ``tests.conftest``, so its numbers repeat the ``tenant`` fixture's."""

T = TypeVar("T")


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    """Debian's ``prometheus`` server (package ``prometheus``), installed once if possible."""
    return debian_tool("prometheus", "prometheus")


def poll(what: str, probe: Callable[[], T | None], timeout: float = WAIT) -> T:
    """``probe()`` until it answers something other than None; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            answer = probe()
        except requests.RequestException as exc:
            answer, last = None, exc
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last})")
        time.sleep(0.2)


class Prometheus:
    """The HTTP API of a running Prometheus server."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def get(self, path: str, **params: str) -> Any:
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.output()}")
        response = requests.get(self.url + path, params=params, timeout=5)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def scalar(self, query: str) -> float | None:
        """The single value of an instant ``query``; None when it has no result yet."""
        result = self.get("/api/v1/query", query=query)["result"]
        assert len(result) <= 1, f"{query} should give at most one series: {result}"
        return float(result[0]["value"][1]) if result else None

    def target(self) -> dict[str, Any] | None:
        """The node's target, once Prometheus has discovered it."""
        targets = self.get("/api/v1/targets")["activeTargets"]
        ours = [t for t in targets if t["labels"].get("job") == JOB]
        assert len(ours) <= 1, ours
        return ours[0] if ours else None

    def rules(self) -> dict[str, dict[str, Any]]:
        """Every alerting rule loaded, by name."""
        groups = self.get("/api/v1/rules", type="alert")["groups"]
        return {rule["name"]: rule for group in groups for rule in group["rules"]}


def write_config(directory: Path, node_url: str) -> Path:
    """A Prometheus configuration scraping ``node_url`` every second with the real rules."""
    shutil.copyfile(RULES, directory / "rules.yml")  # the real rules, byte for byte
    test_rules = {
        "groups": [
            {
                "name": "idnode-test-only",
                "rules": [
                    {
                        "alert": TEST_ALERT,
                        "expr": f'sum(idnode_http_requests_total{{job="{JOB}"}}) > 0',
                        "for": "0s",
                        "labels": {"severity": "none"},
                    }
                ],
            }
        ]
    }
    (directory / "test-rules.yml").write_text(yaml.safe_dump(test_rules))
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(directory / "rules.yml"), str(directory / "test-rules.yml")],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "scheme": "http",
                "static_configs": [{"targets": [node_url.removeprefix("http://")]}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def prometheus(binary: str, directory: Path, node_url: str) -> Iterator[Prometheus]:
    """Prometheus on a free loopback port with its storage under ``directory``; always ended."""
    config = write_config(directory, node_url)
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--web.console.templates={directory / 'consoles'}",
                f"--web.console.libraries={directory / 'console_libraries'}",
                "--log.level=warn",
            ],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            server = Prometheus(f"http://127.0.0.1:{port}", process, log)

            def ready() -> bool | None:
                if process.poll() is not None:
                    pytest.fail(f"prometheus exited ({process.returncode}):\n{server.output()}")
                return True if requests.get(server.url + "/-/ready", timeout=2).ok else None

            poll("Prometheus to be ready", ready, timeout=15)
            yield server
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def fetch(url: str, method: str = "GET", **kwargs: Any) -> requests.Response:
    """One request on a new connection, so the kernel spreads them over both workers."""
    kwargs.setdefault("headers", {})["Connection"] = "close"
    return requests.request(method, url, timeout=10, **kwargs)


@pytest.mark.timeout(INSTALL_TIMEOUT + 90)
def test_prometheus_scrapes_the_node_and_evaluates_the_rules(
    prometheus_binary: str, db_url: str, key_dir: Path, tmp_path: Path
) -> None:
    admin = Tenant(PREFIX, f"prometheus-secret-{secrets.token_hex(8)}")
    (tmp_path / "prom").mkdir()
    env = {
        "IDNODE_WORKERS": "2",
        "IDNODE_BOOTSTRAP_PREFIX": admin.prefix,
        "IDNODE_BOOTSTRAP_SECRET": admin.secret,
        "IDNODE_NODE_KEY": str(key_dir / "node.pem"),
        "IDNODE_SEALING_KEY": str(key_dir / "sealing.key"),
    }
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(contextlib.ExitStack())  # closed early, on purpose, below
        node_url, _ = node.enter_context(served(db_url, tmp_path / "data", **env))
        poll("the node to be ready", lambda: True if fetch(node_url + "/readyz").ok else None)
        # A worker other than the first is ready before the first has homed the bootstrap
        # prefix: wait for the prefix's own handle. Every resolution is tallied by status.
        answered: collections.Counter[int] = collections.Counter()

        def resolve(handle: str) -> requests.Response:
            answer = fetch(f"{node_url}/api/handles/{handle}")
            answered[answer.status_code] += 1
            return answer

        homed = f"0.NA/{admin.prefix}"
        poll("the bootstrap prefix to be homed", lambda: True if resolve(homed).ok else None)
        handle_url = f"{node_url}/api/handles/{admin.handle('prom')}"
        created = fetch(handle_url, "PUT", json=[URL_VALUE], headers=dict(admin.auth))
        assert created.status_code == 201, created.text
        for _ in range(RESOLVED):
            answer = resolve(admin.handle("prom"))
            assert answer.status_code == 200, answer.text
        for i in range(MISSING):
            answer = resolve(admin.handle(f"absent-{i}"))
            assert answer.status_code == 404, answer.text

        server = stack.enter_context(prometheus(prometheus_binary, tmp_path / "prom", node_url))

        def target_up() -> dict[str, Any] | None:
            target = server.target()
            return target if target is not None and target["health"] == "up" else None

        target = poll("the node's target to be up", target_up)
        assert target["scrapeUrl"] == f"{node_url}/metrics", target
        assert target["lastError"] == "", target

        def at_least(query: str, wanted: float) -> Callable[[], float | None]:
            def probe() -> float | None:
                value = server.scalar(query)
                return value if value is not None and value >= wanted else None

            return probe

        all_200 = 'sum(idnode_http_requests_total{code="200"})'
        poll(f"{all_200} >= {answered[200]}", at_least(all_200, answered[200]))  # fails if not
        # Exactly the resolutions the test made, summed over both workers' counts.
        resolves = 'sum(idnode_http_requests_total{job="%s", endpoint="resolve", code="%s"})'
        for code, made in sorted(answered.items()):
            got = poll(f"{code} resolutions", at_least(resolves % (JOB, code), made))
            assert got == made, f"{got} resolutions answered {code} seen, {made} made"
        writes = 'sum(idnode_registry_writes_total{operation="write", outcome="ok"})'
        assert poll("the write", at_least(writes, 1)) == 1
        # Both workers hold their LISTEN connection: the livesum gauge adds them up.
        trusted = f'max(idnode_cache_trusted{{job="{JOB}"}})'
        assert poll("both workers' LISTEN gauges", at_least(trusted, 2)) == 2

        def evaluated() -> dict[str, dict[str, Any]] | None:
            rules = server.rules()
            fired = rules.get(TEST_ALERT, {}).get("state") == "firing"
            done = all(rule["health"] != "unknown" for rule in rules.values())
            return rules if fired and done else None

        rules = poll(f"{TEST_ALERT} to fire and every rule to be evaluated", evaluated)
        groups = yaml.safe_load(RULES.read_text())["groups"]
        real = {rule["alert"] for group in groups for rule in group["rules"]}
        assert set(rules) == real | {TEST_ALERT}, "every alert of rules.yml is loaded"
        broken = {n: r["lastError"] for n, r in rules.items() if r["health"] != "ok"}
        assert not broken, f"rules failing to evaluate against the real metrics: {broken}"
        active = {n: r["state"] for n, r in rules.items() if r["state"] != "inactive"}
        assert active == {TEST_ALERT: "firing"}, f"only the test rule may be active: {active}"
        assert rules["IdnodeDown"]["state"] == "inactive", rules["IdnodeDown"]
        alerts = server.get("/api/v1/alerts")["alerts"]
        assert [a["labels"]["alertname"] for a in alerts] == [TEST_ALERT], alerts
        assert alerts[0]["state"] == "firing", alerts

        node.close()  # SIGTERM; served() checks the clean exit. Prometheus keeps scraping.

        up = f'up{{job="{JOB}"}}'
        poll("up to drop to 0", lambda: True if server.scalar(up) == 0 else None)  # fails if not

        def idnode_down() -> dict[str, Any] | None:
            rule = server.rules()["IdnodeDown"]
            return rule if rule["state"] != "inactive" else None

        rule = poll("IdnodeDown to leave inactive", idnode_down, timeout=10)
        assert rule["state"] == "pending", f"IdnodeDown has for: 2m, so pending first: {rule}"
        assert [a["labels"]["instance"] for a in rule["alerts"]] == [target["labels"]["instance"]]
