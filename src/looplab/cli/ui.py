"""`looplab ui`: MLflow's own UI over looplab's store, lean, opened on the training runs.

`python -m mlflow server` with one worker and MLflow's job runner off (it runs GenAI jobs,
not needed to browse runs): two processes instead of a dozen. Its chatter (start-up notes,
access logs, deprecation warnings) goes to a log file beside the store; the user sees one
link. MLflow 3.17's UI opens on a GenAI traces overview; the link goes straight to the
experiment's runs (`?workflowType=machine_learning`). Ctrl-C, SIGTERM or SIGHUP (a closed
terminal) stops the server (SIGTERM, which MLflow passes on to uvicorn), then anything left of
its process group; killed outright, we take the server with us (`server.start_server`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from looplab.core.errors import EXIT_INTERRUPTED, Terminated, TrackingError
from looplab.core.signals import stops_raise, while_closing

STOP_TIMEOUT_SECONDS = 10.0


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    ui = commands.add_parser(
        "ui",
        parents=[common],
        help="MLflow's UI over the store, opened on the experiment's runs",
        description="Run MLflow's UI server over the store and print a link to the "
        "experiment's runs. Ctrl-C stops it.",
    )
    ui.add_argument("--port", type=int, default=5000, help="default: %(default)s")
    ui.add_argument(
        "--host",
        default="127.0.0.1",
        help="the interface to listen on (default: %(default)s, this machine only)",
    )
    ui.set_defaults(run=ui_command)


def runs_link(base_url: str, experiment_id: str) -> str:
    """The UI's page of an experiment's training runs (not the GenAI traces overview)."""
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def ui_command(args: argparse.Namespace) -> int:
    from looplab.server import check_port, link_host, server_args, server_env, start_server
    from looplab.tracking.reader import sqlite_path

    uri, host, port = args.tracking_uri, args.host, args.port
    if uri.startswith(("http://", "https://")):
        raise TrackingError(f"{uri} is a tracking server already: open it in a browser")
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise TrackingError(
            f"no MLflow store at {database}: train something first (looplab-train), "
            "or pass --tracking-uri"
        )
    check_port(host, port)
    folder = database.resolve().parent if database else Path(tempfile.gettempdir())
    artifact_root = (folder / "artifacts").as_uri() if database else None
    command = server_args(
        uri, host=host, port=port, default_artifact_root=artifact_root, access_log=False
    )
    base_url = f"http://{link_host(host)}:{port}"
    log_path = folder / f"mlflow-ui-{port}.log"
    with log_path.open("w", encoding="utf-8") as log:

        def start() -> subprocess.Popen:
            # no job runner, no warnings; Ctrl-C reaches us, and we stop the server once
            return start_server(
                command, server_env(warnings=False), stdout=log, stderr=subprocess.STDOUT
            )

        def ready() -> None:
            link = runs_link(base_url, _experiment_id(base_url, args.experiment, uri))
            print(f"MLflow UI of experiment {args.experiment!r}: {link}", flush=True)
            print(f"(Ctrl-C stops it; server log: {log_path})", file=sys.stderr, flush=True)

        return serve(start, base_url, ready, log_path)


def serve(
    start: Callable[[], subprocess.Popen],
    base_url: str,
    ready: Callable[[], None],
    log_path: Path | None = None,
) -> int:
    """Start an MLflow server, call `ready` once it answers, and serve until Ctrl-C (130),
    SIGTERM (143) or SIGHUP (129); stop it however this ends. `looplab ui` and `looplab server`
    share it.

    Ctrl-C is caught explicitly too: a shell's `looplab ui &` would otherwise start with it
    ignored. While the server stops (seconds at most), a second Ctrl-C is ignored, so it never
    leaves the server behind.
    """
    from looplab.server import wait_until_healthy

    server = None
    with stops_raise():
        try:
            server = start()
            wait_until_healthy(base_url, server, log_path)
            ready()
            code = server.wait()
            see = f"; see {log_path}" if log_path else ""
            raise TrackingError(f"the MLflow server exited with code {code}{see}")
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except Terminated as stop:
            return stop.exit_code
        finally:
            while_closing(leave=False)
            if server is not None:
                _stop(server)


def _experiment_id(base_url: str, experiment: str, uri: str) -> str:
    """Ask the running server, so the link names what it serves; no MLflow import here."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    url = f"{base_url}/api/2.0/mlflow/experiments/get-by-name?{query}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)["experiment"]["experiment_id"]
    except urllib.error.HTTPError as error:
        if error.code == 404:
            raise TrackingError(f"no experiment {experiment!r} in {uri}") from None
        raise TrackingError(f"the MLflow server answered {error.code} for {url}") from None


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to `mlflow server` (it forwards it to uvicorn and waits), then SIGKILL to
    whatever of its process group outlives STOP_TIMEOUT_SECONDS."""
    if server.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=STOP_TIMEOUT_SECONDS)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(server.pid, 0)  # raises once the group is empty
            time.sleep(0.1)
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()
