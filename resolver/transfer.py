"""Placeholder: filled in by the work on issue 5."""

from __future__ import annotations

import argparse

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register this module's HTTP routes."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register this module's `idnode` subcommands."""
