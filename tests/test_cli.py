"""The ``idnode`` command line as an operator runs it (real subprocess, real database), and
the bootstrap prefix homed at first start."""

from __future__ import annotations

import itertools
import os
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from registry import migrate
from registry.auth import Authority
from registry.errors import AuthenticationNeeded
from registry.registry import Registry
from registry.store import Store
from resolver.app import bootstrap
from resolver.config import Config
from tests.conftest import run_idnode, served

Cli = Callable[..., subprocess.CompletedProcess[str]]
_numbers = itertools.count(1)


def new_prefix() -> str:
    return f"88.300.{next(_numbers)}"


def identity(prefix: str) -> str:
    return f"300:0.NA/{prefix}"


def single_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line an operator sees on failure: no traceback, nothing else."""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("idnode: ")
    return lines[0]


async def test_prefix_add_list_and_add_again(cli: Cli, store: Store) -> None:
    prefix = new_prefix()
    added = cli("prefix", "add", prefix, "--secret", "first-secret")
    assert added.returncode == 0, added.stderr
    assert identity(prefix) in added.stdout
    assert "first-secret" not in added.stdout  # a given secret is not echoed
    assert "generated" not in added.stdout

    listed = cli("prefix", "list")
    assert listed.returncode == 0, listed.stderr
    assert prefix in listed.stdout.splitlines()

    again = cli("prefix", "add", prefix, "--secret", "second-secret")
    assert again.returncode == 1
    line = single_error_line(again)
    assert prefix in line and "already homed" in line

    # the refused second add changed nothing: the first secret still holds
    authority = Authority(store)
    who = await authority.authenticate(identity(prefix), "first-secret")
    assert (who.index, who.handle.text) == (300, f"0.NA/{prefix}")
    with pytest.raises(AuthenticationNeeded):
        await authority.authenticate(identity(prefix), "second-secret")


async def test_prefix_add_generates_a_secret_that_works(cli: Cli, store: Store) -> None:
    prefix = new_prefix()
    added = cli("prefix", "add", prefix)
    assert added.returncode == 0, added.stderr
    found = re.search(r"generated secret \(shown once\): (\S+)$", added.stdout, re.MULTILINE)
    assert found, added.stdout
    secret = found.group(1)
    assert len(secret) >= 16

    authority = Authority(store)
    who = await authority.authenticate(identity(prefix), secret)
    assert who.handle.text == f"0.NA/{prefix}"
    with pytest.raises(AuthenticationNeeded):
        await authority.authenticate(identity(prefix), secret + "x")


async def test_prefix_add_invalid_prefix(cli: Cli, store: Store) -> None:
    result = cli("prefix", "add", "bad/prefix", "--secret", "s")
    assert result.returncode == 1
    line = single_error_line(result)
    assert "prefix" in line and "'/'" in line
    assert "bad/prefix" not in await store.homed_prefixes()


def test_migrate_command(cli: Cli) -> None:
    result = cli("migrate")
    assert result.returncode == 0, result.stderr
    latest = max(m.version for m in migrate.available())
    assert f"schema at version {latest}" in result.stdout


# --- bootstrap ---------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_bootstrap_generates_a_private_secret_file(
    registry: Registry, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = new_prefix()
    data_dir = tmp_path / "data"  # not there yet: bootstrap creates it
    config = Config(bootstrap_prefix=prefix, data_dir=data_dir)
    await bootstrap(config, registry)

    path = data_dir / "bootstrap-secret"
    assert path.is_file()
    assert mode(path) == 0o600
    secret = path.read_text().strip()
    assert secret
    assert await store.is_homed(prefix)
    who = await Authority(store).authenticate(identity(prefix), secret)
    assert who.handle.text == f"0.NA/{prefix}"
    assert str(path) in capsys.readouterr().out

    before = (path.read_bytes(), path.stat().st_mtime_ns)
    await bootstrap(config, registry)  # second start: already homed, the file is left alone
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert capsys.readouterr().out == ""
    await Authority(store).authenticate(identity(prefix), secret)


async def test_bootstrap_with_a_given_secret_writes_no_file(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    prefix = new_prefix()
    await bootstrap(
        Config(bootstrap_prefix=prefix, bootstrap_secret="given-secret", data_dir=tmp_path),
        registry,
    )
    assert not (tmp_path / "bootstrap-secret").exists()
    await Authority(store).authenticate(identity(prefix), "given-secret")


async def test_bootstrap_without_a_prefix_does_nothing(registry: Registry, tmp_path: Path) -> None:
    before = await registry.store.homed_prefixes()
    await bootstrap(Config(data_dir=tmp_path), registry)
    assert await registry.store.homed_prefixes() == before
    assert list(tmp_path.iterdir()) == []


async def test_bootstrap_secret_file_is_private_even_if_it_existed(
    registry: Registry, store: Store, tmp_path: Path
) -> None:
    """A leftover file (e.g. from an earlier database) must not keep its looser mode."""
    path = tmp_path / "bootstrap-secret"
    path.write_text("stale\n")
    os.chmod(path, 0o644)
    prefix = new_prefix()
    await bootstrap(Config(bootstrap_prefix=prefix, data_dir=tmp_path), registry)
    secret = path.read_text().strip()
    assert secret != "stale"
    await Authority(store).authenticate(identity(prefix), secret)
    assert mode(path) == 0o600


def test_commands_share_the_embedded_database_with_a_running_node(tmp_path: Path) -> None:
    """Without DATABASE_URL every command uses the embedded PostgreSQL under the data dir."""
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["IDNODE_DATA_DIR"] = str(data_dir)

    first = run_idnode("prefix", "add", "88.310.1", "--secret", "embedded-secret", env=env)
    assert first.returncode == 0, first.stderr
    assert (data_dir / "pg" / "PG_VERSION").exists()
    listed = run_idnode("prefix", "list", env=env)  # the server was stopped: started again
    assert "88.310.1" in listed.stdout.split()

    with served(None, data_dir) as (base, _):
        url = f"{base}/api/handles/0.NA/88.310.2"
        assert requests.get(url, timeout=5).json()["responseCode"] == 301
        added = run_idnode("prefix", "add", "88.310.2", "--secret", "while-running", env=env)
        assert added.returncode == 0, added.stderr
        answer = requests.get(url, timeout=5)
        assert answer.status_code == 200 and answer.json()["handle"] == "0.NA/88.310.2"
    assert "88.310.2" in run_idnode("prefix", "list", env=env).stdout.split()
