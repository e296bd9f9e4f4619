"""``idnode import`` and ``idnode export`` as an operator runs them: real files, real
processes, interrupted and resumed."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from registry import bulk
from registry.store import Store
from resolver.transfer import Progress
from tests.conftest import ROOT, TenantFactory, data_template

Cli = Callable[..., subprocess.CompletedProcess[str]]


async def stored(store: Store, prefix: str) -> dict[str, Any]:
    rows = await store.pool.fetch(
        "SELECT handle, \"values\" FROM handles WHERE prefix_key = $1 AND suffix_key <> ''"
        " ORDER BY suffix_key",
        prefix,
    )
    return {r["handle"]: orjson.loads(r["values"]) for r in rows}


def error_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


async def test_csv_import_with_an_error_report(
    cli: Cli, tenant: TenantFactory, store: Store, tmp_path: Path
) -> None:
    t = await tenant()
    source = tmp_path / "parts.csv"
    source.write_text(
        "handle,URL,5:EMAIL,DESCRIPTION\n"
        f"{t.prefix}/P1,https://example.com/p1,a@example.com,first\n"
        f'{t.prefix}/P2,https://example.com/p2,,"second, with a comma"\n'
        "no-slash-here,https://example.com/x,,\n"
        f"{t.prefix}/P3,https://example.com/p3\n"
        f'{t.prefix}/P4,https://example.com/p4,,"spans\ntwo lines"\n'
        f"99.404.1/P5,https://example.com/p5,,\n"
    )
    result = cli("import", str(source))
    assert result.returncode == 1, result.stderr
    assert "3 applied, 3 failed" in result.stderr
    records = await stored(store, t.prefix)
    assert sorted(records) == [f"{t.prefix}/P1", f"{t.prefix}/P2", f"{t.prefix}/P4"]
    p1 = {v["index"]: v for v in records[f"{t.prefix}/P1"]}
    assert p1[1]["type"] == "URL" and p1[1]["data"]["value"] == "https://example.com/p1"
    assert p1[5]["type"] == "EMAIL" and p1[2]["type"] == "DESCRIPTION"
    p2 = {v["index"]: v for v in records[f"{t.prefix}/P2"]}
    assert sorted(p2) == [1, 2] and p2[2]["data"]["value"] == "second, with a comma"
    assert {v["index"]: v for v in records[f"{t.prefix}/P4"]}[2]["data"]["value"] == (
        "spans\ntwo lines"
    )
    report = error_report(tmp_path / "parts.csv.errors.csv")
    assert [r["line"] for r in report] == ["4", "5", "8"]
    assert report[0]["responseCode"] == "102" and "no-slash-here" == report[0]["handle"]
    assert "2 columns where the header has 4" in report[1]["message"]
    assert report[2]["responseCode"] == "301" and "not homed" in report[2]["message"]


async def test_csv_with_a_suffix_column_and_template_errors(
    cli: Cli, tenant: TenantFactory, store: Store, tmp_path: Path
) -> None:
    t = await tenant()
    template = data_template(
        {"batch": {"type": "string", "pattern": "^B[0-9]+$", "x-handle": {"type": "BATCH"}}},
        "batch",
    )
    (tmp_path / "t.json").write_bytes(orjson.dumps(template))
    assert cli("template", "set", t.prefix, str(tmp_path / "t.json")).returncode == 0
    source = tmp_path / "line.csv"
    source.write_text("suffix,BATCH\nS1,B100\nS2,oops\n")
    assert "--prefix" in cli("import", str(source)).stderr
    result = cli("import", str(source), "--prefix", t.prefix)
    assert result.returncode == 1
    assert list(await stored(store, t.prefix)) == [f"{t.prefix}/S1"]
    (row,) = error_report(tmp_path / "line.csv.errors.csv")
    assert row["line"] == "3" and row["responseCode"] == "202"
    assert orjson.loads(row["errors"])[0]["field"] == "batch"
    assert orjson.loads(row["errors"])[0]["rule"] == "pattern"


async def test_export_then_import_round_trips(
    cli: Cli, tenant: TenantFactory, store: Store, tmp_path: Path
) -> None:
    t = await tenant()
    source = tmp_path / "in.ndjson"
    lines = [
        {"handle": f"{t.prefix}/X{i}", "values": [{"index": 1, "type": "URL", "data": f"u{i}"}]}
        for i in range(50)
    ]
    source.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    assert cli("import", str(source)).returncode == 0
    before = await stored(store, t.prefix)
    assert len(before) == 50
    exported = tmp_path / "out.ndjson"
    result = cli("export", "--prefix", t.prefix, "--output", str(exported))
    assert result.returncode == 0, result.stderr
    assert "50 records" in result.stderr
    out = [orjson.loads(x) for x in exported.read_bytes().splitlines()]
    assert [x["handle"] for x in out] == sorted(before, key=str.lower)
    assert {x["handle"]: x["values"] for x in out} == before
    await store.pool.execute(
        "DELETE FROM handles WHERE prefix_key = $1 AND suffix_key <> ''", t.prefix
    )
    data_only = exported
    assert cli("import", str(data_only)).returncode == 0
    assert await stored(store, t.prefix) == before  # values, timestamps and all
    again = cli("import", str(data_only))
    assert again.returncode == 0 and "imported already" in again.stderr
    redo = cli("import", str(data_only), "--restart", "--overwrite")
    assert redo.returncode == 0 and "50 applied" in redo.stderr
    assert await stored(store, t.prefix) == before


async def test_export_of_an_unknown_prefix(cli: Cli) -> None:
    result = cli("export", "--prefix", "99.404.77")
    assert result.returncode == 1 and "not homed" in result.stderr
    assert "Traceback" not in result.stderr


async def test_atomic_import_writes_nothing_on_a_bad_row(
    cli: Cli, tenant: TenantFactory, store: Store, tmp_path: Path
) -> None:
    t = await tenant()
    source = tmp_path / "a.csv"
    source.write_text(f"handle,URL\n{t.prefix}/A1,u1\nbad handle,u2\n{t.prefix}/A3,u3\n")
    result = cli("import", str(source), "--mode", "atomic")
    assert result.returncode == 1 and "nothing was written" in result.stderr
    assert await stored(store, t.prefix) == {}
    assert [r["line"] for r in error_report(tmp_path / "a.csv.errors.csv")] == ["3"]


def _start_import(source: Path, db_url: str, data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "IDNODE_DATA_DIR": str(data_dir)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resolver.cli",
            "import",
            str(source),
            "--chunk",
            "500",
            "--progress-interval",
            "0.05",
            *extra,
        ],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _interrupt_and_resume(
    how: signal.Signals, db_url: str, store: Store, tenant: TenantFactory, tmp_path: Path
) -> tuple[int, str]:
    t = await tenant()
    n = 30000
    source = tmp_path / "big.csv"
    source.write_text(
        "handle,URL\n" + "".join(f"{t.prefix}/K{i:06},https://example.com/{i}\n" for i in range(n))
    )
    proc = _start_import(source, db_url, tmp_path)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until some chunks are committed
        line = proc.stderr.readline()
        if "rows" in line and int(line.split(" rows")[0].split()[-1].replace(",", "")) >= 2000:
            break
    proc.send_signal(how)
    rest = proc.communicate(timeout=60)[1]
    count = await store.pool.fetchval(
        "SELECT count(*) FROM handles WHERE prefix_key = $1 AND suffix_key <> ''", t.prefix
    )
    job = await store.pool.fetchrow(
        "SELECT applied, line, done FROM imports WHERE path = $1", str(source)
    )
    assert 0 < count < n, "the import was not interrupted midway"
    assert count % 500 == 0 and count == job["applied"]  # whole chunks only, all recorded
    assert job["done"] is False and job["line"] == count + 1
    resumed = _start_import(source, db_url, tmp_path)
    out = resumed.communicate(timeout=120)[1]
    assert resumed.returncode == 0, out
    assert f"resuming {source} after line {count + 1:,}" in out
    assert f"{n - count} applied, 0 failed" in out
    records = await stored(store, t.prefix)
    assert len(records) == n
    creates = await store.pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE handle LIKE $1 AND operation = 'create'",
        f"{t.prefix}/%",
    )
    assert creates == n  # no row was written twice
    return proc.returncode, rest


async def test_sigterm_mid_import_leaves_whole_chunks_and_resumes(
    db_url: str, store: Store, tenant: TenantFactory, tmp_path: Path
) -> None:
    code, err = await _interrupt_and_resume(signal.SIGTERM, db_url, store, tenant, tmp_path)
    assert code == 130 and "run the same command again to continue" in err
    assert "Traceback" not in err


async def test_killed_mid_import_leaves_whole_chunks_and_resumes(
    db_url: str, store: Store, tenant: TenantFactory, tmp_path: Path
) -> None:
    code, _ = await _interrupt_and_resume(signal.SIGKILL, db_url, store, tenant, tmp_path)
    assert code == -signal.SIGKILL


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise() -> None:
    ok = [bulk.Outcome(i, f"88.1/{i}", 1, "created") for i in range(10)]
    bad = [bulk.Outcome(11, "88.1/x", 4, "no")]
    terminal = _Terminal()
    bar = Progress(1000, 0, out=terminal, interval=5.0)
    bar.update(500, ok, final=True)
    bar.update(1000, bad, final=True)
    text = terminal.getvalue()
    assert text.startswith("\r[############............]  50.0%  10 rows (10 applied, 0 rejected)")
    assert "rows/s  ETA" in text and "100.0%  11 rows (10 applied, 1 rejected)" in text
    plain = io.StringIO()
    lines = Progress(1000, 0, out=plain, interval=5.0)
    lines.update(100, ok, final=True)
    lines.update(200, ok)  # within the interval: not printed
    assert plain.getvalue().count("\n") == 1
    assert plain.getvalue().startswith("idnode import:  10.0%  10 rows")
