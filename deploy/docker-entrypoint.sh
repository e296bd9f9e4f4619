#!/bin/sh
# Entrypoint of the idnode image: `idnode "$@"` (default: `idnode serve`).
# A container never starts the embedded PostgreSQL: every command but `config` and
# `--help` needs DATABASE_URL.
set -eu

case "${1:-}" in
    config | --help | -h) ;;
    *)
        if [ -z "${DATABASE_URL:-}" ]; then
            echo "idnode: DATABASE_URL is not set: containers need a PostgreSQL server" \
                "(postgresql://user:password@host:5432/db); the embedded one is not used here" >&2
            exit 2
        fi
        ;;
esac
exec idnode "$@"
