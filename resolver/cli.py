"""``idnode``: the single entry point of every command.

Every command uses the node's database: ``DATABASE_URL`` when set, otherwise
the embedded PostgreSQL under ``IDNODE_DATA_DIR`` (started if needed).
"""

from __future__ import annotations

import argparse
import secrets
import sys

from registry import migrate
from registry.errors import ClientError, IdNodeError
from registry.store import Store
from resolver import audit_cli, handle_client, server, templates_api, transfer
from resolver.app import node_registry
from resolver.commands import run, with_store
from resolver.config import Config, check_base_url
from resolver.database import database_url
from resolver.logs import configure_logging
from resolver.sites import site_value


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    return server.run(config, database_url(config))


def cmd_migrate(config: Config, args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        async with store.pool.acquire() as conn:
            versions = sorted(await migrate.applied(conn))
        print(f"idnode: schema at version {versions[-1] if versions else 0}")
        return 0

    return run(with_store(config, work))


def cmd_prefix_add(config: Config, args: argparse.Namespace) -> int:
    secret = args.secret or secrets.token_urlsafe(24)

    async def work(store: Store) -> int:
        if not await node_registry(config, store).home_prefix(args.prefix, secret):
            print(f"idnode: prefix {args.prefix} is already homed", file=sys.stderr)
            return 1
        print(f"idnode: homed {args.prefix}; admin identity 300:0.NA/{args.prefix}")
        if not args.secret:
            print(f"idnode: generated secret (shown once): {secret}")
        return 0

    return run(with_store(config, work))


def cmd_prefix_list(config: Config, args: argparse.Namespace) -> int:
    async def work(store: Store) -> int:
        for prefix in await store.homed_prefixes():
            print(prefix)
        return 0

    return run(with_store(config, work))


def cmd_prefix_delegate(config: Config, args: argparse.Namespace) -> int:
    """Refer others to the node serving a prefix derived from one homed here (recursion)."""
    problem = check_base_url(args.url)
    if problem:
        print(f"idnode: URL {args.url!r} {problem}", file=sys.stderr)
        return 1

    async def work(store: Store) -> int:
        registry = node_registry(config, store)
        site = site_value(args.url, registry.timestamp())
        created = await registry.delegate(args.prefix, site)
        print(f"idnode: 0.NA/{args.prefix} {'created' if created else 'changed'}: {args.url}")
        return 0

    return run(with_store(config, work))


def cmd_config_show(config: Config, args: argparse.Namespace) -> int:
    for env, value, source, help_text in config.describe():
        print(f"{env}={value}    # from {source}: {help_text}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="idnode", description="Identifier-resolution node")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="serve the HTTP API").set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    prefix = sub.add_parser("prefix", help="manage homed prefixes")
    psub = prefix.add_subparsers(dest="prefix_command", required=True)
    add = psub.add_parser("add", help="home a prefix on this node")
    add.add_argument("prefix", help="the prefix, e.g. 88.118.8")
    add.add_argument("--secret", help="admin secret of 300:0.NA/PREFIX (generated if omitted)")
    add.set_defaults(func=cmd_prefix_add)
    psub.add_parser("list", help="list homed prefixes").set_defaults(func=cmd_prefix_list)
    delegate = psub.add_parser(
        "delegate", help="refer others to the node serving a prefix derived from a homed one"
    )
    delegate.add_argument("prefix", help="the derived prefix, e.g. 88.200 under a homed 88")
    delegate.add_argument("url", help="base URL of the node serving it, e.g. http://10.0.0.5:8000")
    delegate.set_defaults(func=cmd_prefix_delegate)
    conf = sub.add_parser("config", help="configuration")
    csub = conf.add_subparsers(dest="config_command", required=True)
    csub.add_parser("show", help="print the effective settings").set_defaults(func=cmd_config_show)
    transfer.add_commands(sub)
    templates_api.add_commands(sub)
    audit_cli.add_commands(sub)
    handle_client.add_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        config = Config.from_env()
        configure_logging(config)
        code: int = args.func(config, args)
    except ClientError as exc:
        print(f"idnode: {exc.message}", file=sys.stderr)
        return 1
    except IdNodeError as exc:
        print(f"idnode: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
