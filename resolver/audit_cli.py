"""``idnode audit``: verify the audit log, sign a checkpoint, show the key, export a filing.

- ``verify`` recomputes the whole tree from the entries (or from a signed
  checkpoint on), checks every checkpoint's signature and root, each entry against
  the leaf hash logged for it and its content against its digest, and names the
  first entry or checkpoint that does not match (exit status 1).
- ``export --from --to [--prefix]`` writes the filing report for the top-level node
  (``schemas/filing.md``): the entries of the period, per-prefix counts, the signed
  checkpoint that covers them and the hashes that tie them to its root.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson

from registry import audit, tree, verify
from registry import handle as hs
from registry.errors import AuditNotFound, ConfigError, InvalidHandle
from registry.keys import AuditKey
from registry.store import Store, translated
from resolver.commands import run, with_store
from resolver.config import Config

LONG_STATEMENT = 3600.0


def _public_key(config: Config, given: str | None) -> bytes:
    """The audit key to check signatures with: pinned on the command line, or the node's own."""
    if given:
        try:
            key = base64.b64decode(given, validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigError("--public-key: must be a base64 Ed25519 public key (32 bytes)")
        return key
    path = config.audit_key_path
    if not path.exists():
        raise ConfigError(f"no audit key at {path}: give --public-key")
    return AuditKey.load_or_create(path).public


async def _verify(store: Store, key: bytes, start: int | None) -> int:
    async with translated(), store.pool.acquire() as conn:
        checkpoints = [
            tree.checkpoint_json(row, None)
            for row in await conn.fetch(
                "SELECT size, root, at, body, key_id, signature FROM audit_checkpoints"
                " ORDER BY size"
            )
        ]
        head = await conn.fetchval("SELECT size FROM audit_head")
        integrated = await tree.tree_size(conn)
        checker = verify.LogChecker()
        if start:
            signed = next((c for c in checkpoints if c["size"] == start), None)
            if signed is None:
                raise AuditNotFound(f"no checkpoint of size {start}")
            parts = tree.decomposition(0, start)
            ranges = [(idx << level, (idx + 1) << level) for level, idx in parts]
            checker = verify.LogChecker(start, await tree.hashes(conn, ranges))
            checker.check(signed, key)
        pending = [c for c in checkpoints if c["size"] > checker.size]
        stored_root = await tree.root_at(conn, integrated) if integrated else None
        checked = 0
        try:
            async for row in audit.entries(conn, checker.size):
                leaf = None if row["leaf"] is None else bytes(row["leaf"])
                checker.add(audit.entry_json(row), row["content"], leaf)
                while pending and pending[0]["size"] == checker.size:
                    checker.check(pending.pop(0), key)
                    checked += 1
                if checker.size == integrated and stored_root != checker.root():
                    raise verify.VerificationError(
                        f"the stored tree of {integrated} entries does not match the entries",
                        integrated - 1,
                    )
            if pending:
                raise verify.VerificationError(
                    f"checkpoint of size {pending[0]['size']} covers entries the log does not"
                    f" have: entries from {checker.size} on are missing",
                    checker.size,
                )
            if head != checker.size:
                raise verify.VerificationError(
                    f"the log's head says {head} entries, the log has {checker.size}",
                    checker.size,
                )
        except verify.VerificationError as exc:
            print(f"idnode audit verify: FAILED: {exc}", file=sys.stderr)
            return 1
    root = base64.b64encode(checker.root()).decode("ascii")
    print(
        f"idnode audit verify: ok: {checker.size} entries, {checked} checkpoints"
        f" checked from entry {start or 0}; root {root}"
    )
    return 0


def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    key = _public_key(config, args.public_key)

    async def work(store: Store) -> int:
        return await _verify(store, key, args.from_checkpoint)

    return run(with_store(config, work, command_timeout=LONG_STATEMENT))


def cmd_checkpoint(config: Config, args: argparse.Namespace) -> int:
    key = AuditKey.load_or_create(config.audit_key_path)

    async def work(store: Store) -> int:
        async with translated(), store.pool.acquire() as conn:
            row = await tree.make_checkpoint(conn, key, time.time) or await tree.checkpoint(conn)
        sys.stdout.buffer.write(orjson.dumps(tree.checkpoint_json(row, key)) + b"\n")
        return 0

    return run(with_store(config, work, command_timeout=LONG_STATEMENT))


def cmd_key(config: Config, args: argparse.Namespace) -> int:
    key = AuditKey.load_or_create(config.audit_key_path)
    print(f"{base64.b64encode(key.public).decode('ascii')}  {tree.origin(key.public)}")
    return 0


# --- the filing report ---------------------------------------------------------------------


def _moment(text: str) -> datetime.datetime:
    """A date or an RFC 3339 time; without a zone, UTC."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date or an ISO time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def _prefix_of(handle: str) -> str:
    try:
        return hs.parse(handle).homing_prefix
    except InvalidHandle:
        return handle.partition("/")[0]


class _Report:
    def __init__(self, out: IO[bytes], prefix: str | None) -> None:
        self.out = out
        self.prefix = None if prefix is None else hs.fold(prefix)
        self.counts: dict[str, dict[str, int]] = {}
        self.lines = 0

    def line(self, body: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(body) + b"\n")
        self.lines += 1

    def entry(self, row: Any) -> None:
        prefix = _prefix_of(row["handle"])
        if self.prefix is not None and hs.fold(prefix) != self.prefix:
            leaf = base64.b64encode(bytes(row["leaf"])).decode("ascii")
            self.line({"type": "leaf", "seq": row["seq"], "leafHash": leaf})
            return
        tally = self.counts.setdefault(prefix, {"registered": 0, "changed": 0, "deleted": 0})
        what = verify.COUNTED.get(row["operation"], "changed")
        tally[what] += 1
        self.line(
            {"type": "entry", **audit.entry_json(row), "prefix": prefix, "content": row["content"]}
        )


async def _export(store: Store, args: argparse.Namespace, out: IO[bytes]) -> int:
    key = AuditKey.load_or_create(args.key_path)
    report = _Report(out, args.prefix)
    async with translated(), store.pool.acquire() as conn:
        first, end = await audit.period(conn, args.since, args.until)
        await tree.integrate(conn)
        signed = await tree.covering(conn, end) if end else await tree.checkpoint(conn)
        if signed is None:
            signed = await tree.make_checkpoint(conn, key, time.time)
        if signed is None:
            raise AuditNotFound("the audit log has no checkpoint to report against")
        report.line(
            {
                "type": "header",
                "format": verify.FILING_FORMAT,
                "origin": tree.origin(key.public),
                "from": args.since.isoformat(),
                "to": args.until.isoformat(),
                "prefix": args.prefix,
                "firstSeq": first,
                "endSeq": end,
                "generatedAt": datetime.datetime.now(datetime.UTC).isoformat(),
            }
        )
        async for row in audit.entries(conn, first, end):
            report.entry(row)
        if args.prefix is not None:
            report.counts.setdefault(args.prefix, {"registered": 0, "changed": 0, "deleted": 0})
        for prefix, tally in report.counts.items():
            tally["live"] = await conn.fetchval(
                "SELECT coalesce(sum(n), 0)::bigint FROM handle_counts WHERE prefix_key = $1",
                hs.fold(prefix),
            )
        report.line({"type": "counts", "prefixes": report.counts})
        report.line({"type": "checkpoint", **tree.checkpoint_json(signed, key)})
        outside = await tree.hashes(conn, tree.outside_ranges(signed["size"], first, end))
        hashes = [base64.b64encode(h).decode("ascii") for h in outside]
        report.line({"type": "rangeProof", "hashes": hashes})
    print(
        f"idnode audit export: entries {first} to {end - 1} ({end - first}),"
        f" checkpoint of {signed['size']}",
        file=sys.stderr,
    )
    return 0


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    args.key_path = config.audit_key_path
    if args.prefix is not None:
        hs.check_prefix(args.prefix)

    async def work(store: Store) -> int:
        if args.output in (None, "-"):
            code = await _export(store, args, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return code
        with Path(args.output).open("wb") as out:
            return await _export(store, args, out)

    return run(with_store(config, work, command_timeout=LONG_STATEMENT))


def add_commands(sub: Any) -> None:
    """Register ``idnode audit`` and its subcommands."""
    parser = sub.add_parser("audit", help="the tamper-evident audit log")
    asub = parser.add_subparsers(dest="audit_command", required=True)
    check = asub.add_parser("verify", help="check the whole log, its tree and its checkpoints")
    check.add_argument(
        "--from-checkpoint", type=int, metavar="SIZE", help="trust the log up to this checkpoint"
    )
    check.add_argument("--public-key", help="base64 Ed25519 key to check checkpoints with")
    check.set_defaults(func=cmd_verify)
    asub.add_parser("checkpoint", help="sign a checkpoint now").set_defaults(func=cmd_checkpoint)
    asub.add_parser("key", help="print the public audit key").set_defaults(func=cmd_key)
    exp = asub.add_parser("export", help="write the filing report of a period")
    exp.add_argument("--from", dest="since", type=_moment, required=True, help="start (UTC)")
    exp.add_argument("--to", dest="until", type=_moment, required=True, help="end, excluded")
    exp.add_argument("--prefix", help="only this prefix's entries in full")
    exp.add_argument("-o", "--output", help="file to write (default: standard output)")
    exp.set_defaults(func=cmd_export)
