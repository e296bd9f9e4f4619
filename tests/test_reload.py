"""SIGHUP reloads what can change without a restart, keeping connections open."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import requests

from tests.conftest import served


def statuses(session: requests.Session, url: str, count: int) -> list[int]:
    return [session.get(url, timeout=5).status_code for _ in range(count)]


def test_sighup_reloads_limits_and_keeps_connections(db_url: str, tmp_path: Path) -> None:
    settings = tmp_path / "idnode.toml"
    settings.write_text("read_rate = 0\n")
    with served(
        db_url,
        tmp_path / "data",
        IDNODE_CONFIG=str(settings),
        IDNODE_READ_RATE="",  # from the file, not the test default
        IDNODE_WORKERS="2",
    ) as (url, proc):
        target = f"{url}/api/handles/99.404.1/nothing"
        session = requests.Session()  # one keep-alive connection, hence one worker
        assert set(statuses(session, target, 6)) == {400}  # not homed here: 301 → 400

        settings.write_text("read_rate = 0.5\nread_burst = 2\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        seen: list[int] = []
        while 429 not in seen:
            assert time.monotonic() < deadline, f"the new limits never applied: {seen}"
            seen = statuses(session, target, 3)
            time.sleep(0.2)
        refused = session.get(target, timeout=5)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1

        # an invalid file is refused whole: the node keeps serving with what it had
        settings.write_text("read_rate = -1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert session.get(f"{url}/healthz", timeout=5).status_code == 200
        assert proc.poll() is None
        # and the limits it had are still those of the last good file
        assert session.get(target, timeout=5).status_code == 429
