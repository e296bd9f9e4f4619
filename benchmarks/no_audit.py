"""``idnode`` with the audit log switched off: the baseline of ``benchmarks.audit``.

``python -m benchmarks.no_audit import FILE`` is ``idnode import FILE`` with
``registry.audit.append``, ``stage`` and ``append_staged`` replaced by coroutines that
do nothing, so a write changes its rows and notifies, and appends no entry. For
measuring only: a node run like this keeps no audit trail.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import asyncpg

from registry import audit

_NOTIFY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p"


async def skip_append(
    conn: asyncpg.Connection,
    changes: Sequence[audit.Change],
    channel: str = "",
    notifications: Sequence[str] = (),
) -> None:
    """Append nothing; still send the write's notifications, as every write does."""
    if notifications:
        await conn.execute(_NOTIFY, channel, list(notifications))


async def skip_stage(conn: asyncpg.Connection, changes: Sequence[audit.Change]) -> None:
    return None


async def skip_append_staged(conn: asyncpg.Connection) -> None:
    return None


def switch_off() -> None:
    """Replace the three functions every writer appends through (looked up at call time)."""
    audit.append = skip_append
    audit.stage = skip_stage
    audit.append_staged = skip_append_staged


def main() -> int:
    switch_off()
    from resolver import cli

    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
