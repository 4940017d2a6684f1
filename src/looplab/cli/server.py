"""`looplab server`: MLflow's own tracking server for a team, started the way looplab expects.

A real `mlflow server` with a PostgreSQL (or SQLite) backend store and an artifact root that
it serves itself (`--serve-artifacts`: runs log their files as `mlflow-artifacts:` through
the server). It listens on 127.0.0.1 unless told otherwise, and refuses any other interface
without MLflow's authentication (`--app-name basic-auth`): see docs/scaling.md for a team
set-up behind a proxy. MLflow's job runner stays off unless `--jobs`. Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from looplab.core.errors import TrackingError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    server = commands.add_parser(
        "server",
        help="run MLflow's tracking server (PostgreSQL or SQLite) for tracking=server",
        description="Run a real `mlflow server` for looplab-train's tracking=server: a "
        "PostgreSQL or SQLite backend store, artifacts served through the server, bound to "
        "127.0.0.1 unless --host says otherwise. Ctrl-C stops it.",
    )
    server.add_argument(
        "--backend-store-uri",
        metavar="URI",
        default=f"sqlite:///{Path('outputs/server/mlflow.db').resolve()}",
        help="postgresql://USER@HOST:PORT/DB (pip install 'looplab[server]') or "
        "sqlite:///FILE (default: sqlite:///./outputs/server/mlflow.db)",
    )
    server.add_argument(
        "--artifacts-destination",
        metavar="URI",
        default=str(Path("outputs/server/artifacts").resolve()),
        help="where the server keeps the runs' files: a folder or s3://... "
        "(default: ./outputs/server/artifacts)",
    )
    server.add_argument(
        "--host",
        default="127.0.0.1",
        help="the interface to listen on (default: %(default)s, this machine only; any "
        "other needs --app-name basic-auth)",
    )
    server.add_argument("--port", type=int, default=5000, help="default: %(default)s")
    server.add_argument("--workers", type=int, default=1, help="default: %(default)s")
    server.add_argument(
        "--app-name",
        metavar="NAME",
        help="an MLflow server app, e.g. basic-auth (users and permissions; see docs/scaling.md)",
    )
    server.add_argument(
        "--allowed-hosts",
        metavar="HOSTS",
        help="host names the server answers to, comma-separated (the name behind your proxy, "
        "e.g. mlflow.example.org); passed to mlflow server",
    )
    server.add_argument(
        "--jobs", action="store_true", help="run MLflow's job runner too (off by default)"
    )
    server.set_defaults(run=server_command)


def server_command(args: argparse.Namespace) -> int:
    from looplab.cli.ui import serve
    from looplab.server import check_port, link_host, server_args, server_env, start_server

    uri = args.backend_store_uri
    if args.host not in LOOPBACK and not args.app_name:
        raise TrackingError(
            f"--host {args.host} would open every run to anyone who reaches this port: add "
            "--app-name basic-auth and put a TLS proxy in front (docs/scaling.md)"
        )
    if uri.startswith("postgresql"):
        driver = "psycopg2" if uri.startswith("postgresql+psycopg2") else "psycopg"
        if importlib.util.find_spec(driver) is None:
            raise TrackingError(
                f"a PostgreSQL store needs the {driver} driver: pip install -e '.[server]' "
                "(or pip install 'looplab[server]')"
            )
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    destination = args.artifacts_destination
    if "://" not in destination:
        Path(destination).mkdir(parents=True, exist_ok=True)
    check_port(args.host, args.port)
    command = server_args(
        uri,
        host=args.host,
        port=args.port,
        artifacts_destination=destination,
        workers=args.workers,
        app_name=args.app_name,
    )
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    url = f"http://{link_host(args.host)}:{args.port}"

    def start() -> subprocess.Popen:
        return start_server(command, server_env(jobs=args.jobs))

    def ready() -> None:
        print(
            f"MLflow server on {url} (store {_shown(uri)}, artifacts {destination}); train "
            f"against it with: looplab-train tracking=server tracking.uri={url}",
            file=sys.stderr,
            flush=True,
        )

    return serve(start, url, ready)


def _shown(uri: str) -> str:
    """A store URI without its password."""
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        if ":" in credentials:
            return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
    return uri
