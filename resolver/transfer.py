"""``idnode import`` and ``idnode export``: records in bulk, to and from files.

Import reads CSV (a header row naming the columns) or NDJSON (the batch
operations of ``POST /api/batch``, or the lines ``idnode export`` writes) and
applies them through ``registry.bulk`` as the node's operator. In the default
``each`` mode every chunk is one transaction that also records how far the file
was read, so an import stopped by Ctrl-C, SIGTERM or a kill leaves no chunk half
written, and the same command run again continues after the last committed
chunk. Rejected rows go to an error report (CSV: line, handle, responseCode,
message, errors). Progress goes to stderr: a bar with rate and ETA on a
terminal, a plain line every few seconds otherwise.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from registry import bulk
from registry import handle as hs
from registry import values as hv
from registry.errors import ClientError, ProtocolError
from registry.store import Store, Transaction
from resolver.app import node_registry
from resolver.commands import fewer_collections, run, with_store
from resolver.config import Config

LONG_STATEMENT = 24 * 3600.0
"""An export is one COPY statement: it may run far longer than a lookup."""
HEAD_BYTES = 1 << 20


def job_id(path: Path) -> str:
    """What names an import: the file's size, first MiB and last 64 KiB."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(HEAD_BYTES))
        f.seek(max(0, size - 65536))
        digest.update(f.read())
    return digest.hexdigest()


# --- reading the file ----------------------------------------------------------------------


class _Reader:
    """Lines of a file from a byte offset, remembering where each row ended."""

    def __init__(self, f: IO[bytes], offset: int, line: int) -> None:
        f.seek(offset)
        self._f = f
        self.offset = offset
        self.line = line
        self.ends: dict[int, tuple[int, int]] = {}
        """Position (first line) of a row → (offset, line) just after it."""

    def lines(self) -> Iterator[bytes]:
        for raw in self._f:
            self.offset += len(raw)
            self.line += 1
            yield raw

    def ended(self, position: int) -> None:
        self.ends[position] = (self.offset, self.line)


def _value_columns(header: Sequence[str]) -> list[tuple[int, str] | None]:
    """Each column after the handle as (index, type): ``URL`` or ``2:URL``."""
    columns: list[tuple[int, str] | None] = []
    explicit = {int(h.split(":", 1)[0]) for h in header if h.split(":", 1)[0].isdigit()}
    next_index = 1
    for name in header:
        name = name.strip()
        if name.lower() in ("handle", "suffix"):
            columns.append(None)
            continue
        index_text, colon, vtype = name.partition(":")
        if colon and index_text.isdigit():
            index = hv.parse_index(index_text, where=f"the index of column {name!r}")
        else:
            while next_index in explicit:
                next_index += 1
            index, vtype = next_index, name
            next_index += 1
        # the header is checked once as a value would be; the cells then need no parsing
        hv.parse_value({"index": index, "type": vtype, "data": ""}, timestamp="")
        columns.append((index, vtype))
    indexes = [c[0] for c in columns if c is not None]
    if len(set(indexes)) != len(indexes):
        raise ProtocolError("two CSV columns name the same index")
    return columns


def csv_items(
    reader: _Reader, header_line: bytes, prefix: str | None, timestamp: str
) -> Iterator[bulk.Item]:
    """One ``create`` per row; an empty cell is no value."""
    header = next(csv.reader([header_line.decode("utf-8-sig")]))
    lowered = [h.strip().lower() for h in header]
    if "handle" in lowered:
        key, stem = lowered.index("handle"), ""
    elif "suffix" in lowered:
        if not prefix:
            raise ProtocolError("a CSV with a suffix column needs --prefix")
        key, stem = lowered.index("suffix"), f"{hs.check_prefix(prefix)}/"
    else:
        raise ProtocolError("the CSV header must name a handle (or suffix) column")
    try:
        columns = _value_columns(header)
    except ClientError as exc:
        raise ProtocolError(f"CSV header: {exc.message}") from None
    start = reader.line + 1

    def decoded() -> Iterator[str]:
        for raw in reader.lines():
            yield raw.decode("utf-8", errors="replace")

    for row in csv.reader(decoded()):
        position, start = start, reader.line + 1
        reader.ended(position)
        if not any(row):
            continue
        handle = stem + row[key] if key < len(row) else ""
        try:
            if len(row) != len(columns):
                raise ProtocolError(f"{len(row)} columns where the header has {len(columns)}")
            values = tuple(
                hv.Value(c[0], c[1], "string", hv.check_size(cell, c[0]), timestamp=timestamp)
                for c, cell in zip(columns, row, strict=True)
                if c is not None and cell != ""
            )
            yield bulk.Operation(position, "create", hs.parse(handle), values)
        except ClientError as exc:
            yield bulk.Outcome.failed(position, handle, exc)


def ndjson_items(reader: _Reader, timestamp: str) -> Iterator[bulk.Item]:
    for raw in reader.lines():
        position = reader.line
        reader.ended(position)
        if raw.strip():
            yield bulk.parse_line(raw, position, timestamp=timestamp, keep_timestamps=True)


async def _aiter(items: Iterator[bulk.Item]) -> AsyncIterator[bulk.Item]:
    for item in items:
        yield item


# --- progress ------------------------------------------------------------------------------


class Progress:
    """A bar with rate and ETA on a terminal; a plain line every ``interval`` s otherwise."""

    def __init__(
        self, total_bytes: int, start_bytes: int, *, out: IO[str], interval: float
    ) -> None:
        self.total = max(total_bytes, 1)
        self.start_bytes = start_bytes
        self.out = out
        self.tty = out.isatty()
        self.interval = 0.2 if self.tty else interval
        self.started = self.last = time.monotonic()
        self.rows = self.applied = self.failed = 0

    def update(
        self, done_bytes: int, outcomes: Sequence[bulk.Outcome], *, final: bool = False
    ) -> None:
        self.rows += len(outcomes)
        self.applied += sum(o.ok for o in outcomes)
        self.failed += sum(not o.ok for o in outcomes)
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.rows / elapsed
        share = done_bytes / self.total
        byte_rate = (done_bytes - self.start_bytes) / elapsed
        eta = (self.total - done_bytes) / byte_rate if byte_rate > 0 else 0.0
        figures = (
            f"{share:6.1%}  {self.rows:,} rows ({self.applied:,} applied, {self.failed:,} rejected)"
            f"  {rate:,.0f} rows/s  ETA {eta:,.0f} s"
        )
        if self.tty:
            width = 24
            filled = int(width * share)
            end = "\n" if final else ""
            print(f"\r[{'#' * filled}{'.' * (width - filled)}] {figures}", end=end, file=self.out)
        else:
            print(f"idnode import: {figures}", file=self.out)
        self.out.flush()


# --- commands ------------------------------------------------------------------------------


class _ErrorReport:
    """The rejected rows, as CSV; cut back to what the saved progress covers on resume."""

    def __init__(self, path: Path, size: int) -> None:
        new = not path.exists() or size == 0
        self.file = path.open("a+b")
        self.file.truncate(size)
        self.file.seek(size)
        if new:
            self._write([["line", "handle", "responseCode", "message", "errors"]])

    def _write(self, rows: list[list[Any]]) -> None:
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        self.file.write(text.getvalue().encode())

    def add(self, outcomes: Sequence[bulk.Outcome]) -> None:
        rows = [
            [
                o.position,
                o.handle,
                o.response_code,
                o.message,
                orjson.dumps(o.details).decode() if o.details else "",
            ]
            for o in outcomes
            if not o.ok
        ]
        if rows:
            self._write(rows)

    def sync(self) -> int:
        self.file.flush()
        os.fsync(self.file.fileno())
        return self.file.tell()


async def _import(config: Config, args: argparse.Namespace, store: Store) -> int:
    path: Path = args.file
    fmt = args.format or ("csv" if path.suffix.lower() == ".csv" else "ndjson")
    errors_path = args.errors or path.with_name(path.name + ".errors.csv")
    registry = node_registry(config, store)
    mode = bulk.Mode(args.mode)
    job = await bulk.ImportJob.open(store, job_id(path), str(path), restart=args.restart)
    if job.done:
        print(
            f"idnode import: {path} was imported already ({job.applied:,} applied,"
            f" {job.failed:,} rejected); --restart imports it again",
            file=sys.stderr,
        )
        return 0
    if mode is bulk.Mode.ATOMIC:
        job.byte_offset = job.line = job.errors_size = job.applied = job.failed = 0
    resumed = job.byte_offset > 0
    report = _ErrorReport(errors_path, job.errors_size)
    with path.open("rb") as f:
        header = f.readline() if fmt == "csv" else b""
        offset = max(job.byte_offset, len(header))
        line = job.line if job.byte_offset else (1 if header else 0)
        reader = _Reader(f, offset, line)
        timestamp = registry.timestamp()
        rows = (
            csv_items(reader, header, args.prefix, timestamp)
            if fmt == "csv"
            else ndjson_items(reader, timestamp)
        )
        if resumed:
            print(f"idnode import: resuming {path} after line {job.line:,}", file=sys.stderr)
        progress = Progress(
            path.stat().st_size, offset, out=sys.stderr, interval=args.progress_interval
        )
        writer = bulk.BulkWriter(
            registry, None, actor="cli", overwrite=args.overwrite, operator=True
        )

        async def saved(tx: Transaction, outcomes: Sequence[bulk.Outcome]) -> None:
            report.add(outcomes)
            job.errors_size = report.sync()
            last = outcomes[-1].position
            job.byte_offset, job.line = reader.ends[last]
            job.applied += sum(o.ok for o in outcomes)
            job.failed += sum(not o.ok for o in outcomes)
            for position in [p for p in reader.ends if p <= last]:  # the next chunk's stay
                del reader.ends[position]
            await job.save(tx)

        async def shown(outcomes: Sequence[bulk.Outcome]) -> None:
            if mode is bulk.Mode.ATOMIC:
                report.add(outcomes)
            progress.update(reader.offset, outcomes)

        summary = await bulk.run(
            writer,
            _aiter(rows),
            mode=mode,
            emit=shown,
            chunk_size=args.chunk,
            on_chunk=saved if mode is bulk.Mode.EACH else None,
        )
    progress.update(reader.offset, [], final=True)
    job.errors_size = report.sync()
    if summary.stopped is not None:
        print(f"idnode import: stopped: {summary.stopped.message}", file=sys.stderr)
        return 1
    if mode is bulk.Mode.EACH:
        job.done = True
        async with store.writing() as tx:
            await job.save(tx)
    print(f"idnode import: {summary.message}", file=sys.stderr)
    if summary.failed:
        print(f"idnode import: rejected rows are listed in {errors_path}", file=sys.stderr)
    return 0 if summary.failed == 0 else 1


async def _export(args: argparse.Namespace, store: Store) -> int:
    hs.check_prefix(args.prefix)
    await store.require_homed(args.prefix, args.prefix)
    out = sys.stdout.buffer if args.output in (None, "-") else open(args.output, "wb")  # noqa: SIM115
    started = last = time.monotonic()
    lines = 0
    try:

        async def write(data: bytes) -> None:
            nonlocal lines, last
            out.write(data)
            lines += data.count(b"\n")
            now = time.monotonic()
            if now - last >= args.progress_interval:
                last = now
                rate = lines / (now - started)
                print(f"idnode export: {lines:,} records, {rate:,.0f}/s", file=sys.stderr)

        await bulk.export_prefix(store, args.prefix, write)
        out.flush()
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    elapsed = max(time.monotonic() - started, 1e-6)
    print(
        f"idnode export: {lines:,} records in {elapsed:.1f} s ({lines / elapsed:,.0f}/s)",
        file=sys.stderr,
    )
    return 0


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"idnode import: no such file: {args.file}", file=sys.stderr)
        return 2

    async def work(store: Store) -> int:
        fewer_collections()
        return await _import(config, args, store)

    try:
        return run(with_store(config, work, command_timeout=LONG_STATEMENT))
    except KeyboardInterrupt:
        print(
            "idnode import: interrupted; every committed chunk is kept and recorded:"
            " run the same command again to continue",
            file=sys.stderr,
        )
        return 130


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        return await _export(args, store)

    return run(with_store(config, work, command_timeout=LONG_STATEMENT))


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser("import", help="register records in bulk from a CSV or NDJSON file")
    imp.add_argument("file", type=Path, help="a .csv file with a header row, or NDJSON")
    imp.add_argument("--format", choices=["csv", "ndjson"], help="default: from the extension")
    imp.add_argument("--prefix", help="prefix of a CSV whose key column is `suffix`")
    imp.add_argument(
        "--mode",
        choices=[m.value for m in bulk.Mode],
        default="each",
        help="each (default): rows fail alone, resumable; atomic: all or nothing",
    )
    imp.add_argument(
        "--overwrite", action="store_true", help="replace records that exist (default: reject)"
    )
    imp.add_argument("--errors", type=Path, help="error report (default: FILE.errors.csv)")
    imp.add_argument("--restart", action="store_true", help="ignore saved progress")
    imp.add_argument("--chunk", type=int, default=bulk.CHUNK_SIZE, help="rows per transaction")
    imp.add_argument(
        "--progress-interval", type=float, default=5.0, help="seconds between progress lines"
    )
    imp.set_defaults(func=cmd_import)
    exp = sub.add_parser("export", help="write a prefix's records as NDJSON")
    exp.add_argument("--prefix", required=True, help="the prefix to export")
    exp.add_argument("--output", "-o", help="file to write (default: standard output)")
    exp.add_argument(
        "--progress-interval", type=float, default=5.0, help="seconds between progress lines"
    )
    exp.set_defaults(func=cmd_export)
