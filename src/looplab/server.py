"""A real `mlflow server`: its command line (for `looplab server`) and a local one in a
subprocess for the tests and `make bench`; what `looplab server` and `looplab ui` share
(its environment, the port check, the wait until it answers, a link a browser opens).

One place, so `looplab server`, `looplab ui`, the tests and the benchmark start the server
the same way.
It never imports MLflow: the server runs as `python -m mlflow server` in its own session, so
that the whole process group (uvicorn's workers included) can be stopped at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from looplab.core.errors import TrackingError
from looplab.core.signals import dying_with_parent

START_TIMEOUT_SECONDS = 120.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on (at the moment of asking)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def server_args(
    backend_store_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    artifacts_destination: str | Path | None = None,
    workers: int = 1,
    app_name: str | None = None,
    default_artifact_root: str | None = None,
    access_log: bool = True,
) -> list[str]:
    """`python -m mlflow server` serving artifacts through itself (`mlflow-artifacts:`), so a
    client needs nothing but the server's URL to log and read a run's files.

    With `default_artifact_root` (`looplab ui`) it serves none: runs keep their own file://
    artifact URIs, which the server reads directly, and anything created through the UI goes
    there, beside the store, not in ./mlartifacts."""
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri]
    args += ["--host", host, "--port", str(port), "--workers", str(workers)]
    if default_artifact_root:
        args += ["--default-artifact-root", default_artifact_root, "--no-serve-artifacts"]
    else:
        args += ["--serve-artifacts"]
    if artifacts_destination is not None:
        args += ["--artifacts-destination", str(artifacts_destination)]
    if app_name:
        args += ["--app-name", app_name]
    if not access_log:
        args += ["--uvicorn-opts", "--no-access-log"]
    return args


def server_env(jobs: bool = False, warnings: bool = True) -> dict[str, str]:
    """The server's environment: MLflow's job runner (GenAI jobs, extra processes) off
    unless asked for, no telemetry, and Python's warnings off unless `warnings`."""
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if jobs else "false",
    }
    if not warnings:
        env["PYTHONWARNINGS"] = "ignore"  # MLflow's deprecation warnings are not the user's
    return env


def start_server(args: list[str], env: dict[str, str], **streams: Any) -> subprocess.Popen:
    """Start `mlflow server` (`server_args`) so that it never outlives this process: in a
    session of its own, so that Ctrl-C reaches only us and its whole process group (uvicorn's
    workers) can be stopped at once; and sent SIGTERM by the kernel if we die, even by SIGKILL
    (Linux; MLflow passes SIGTERM on to uvicorn). `streams`: Popen's stdout, stderr, cwd."""
    return subprocess.Popen(
        dying_with_parent(args, signal.SIGTERM),
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **streams,
    )


def link_host(host: str) -> str:
    """A host a browser can open: the loopback for a wildcard, brackets for IPv6."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def check_port(host: str, port: int) -> None:
    """Refuse a port in use now, rather than after the server's start-up, in its log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            raise TrackingError(
                f"cannot listen on {host}:{port} ({error.strerror}): pass another --port"
            ) from None


def wait_until_healthy(
    url: str,
    server: subprocess.Popen,
    log: str | Path | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
) -> None:
    """Until /health answers; else a TrackingError that says why not, from the server's log
    (or its output, on the console, when it has no log)."""
    deadline = time.monotonic() + timeout
    see = f"see {log}" if log else "its output above says why"
    while server.poll() is None:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2):
            return
        if time.monotonic() > deadline:
            raise TrackingError(
                f"the MLflow server did not answer on {url} in {timeout:.0f} s; {see}"
            )
        time.sleep(0.25)
    last = f": {_last_line(Path(log))}" if log else " before it answered"
    raise TrackingError(f"the MLflow server exited with code {server.returncode}{last} ({see})")


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "no output")


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str,
    *,
    artifacts_destination: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    cwd: str | Path | None = None,
    log: str | Path | None = None,
    timeout: float = 120,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `mlflow server` on `host` (a free port unless given) until the block ends.

    Yields (url, process) once /health answers. One worker, and MLflow's job runner off
    (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false): neither is needed to track runs, and each
    would be one more process taking CPU from what is measured. The server starts a new
    session, so a caller may kill it and its workers with `os.killpg(process.pid, ...)`;
    whatever is left of the group is killed (SIGKILL) on the way out. Without
    `artifacts_destination`, MLflow puts proxied artifacts in `cwd`/mlartifacts. `log`
    collects the server's output (else it is discarded). Raises TrackingError when the
    server exits or does not answer within `timeout` seconds.
    """
    port = port or free_port(host)
    url = f"http://{host}:{port}"
    args = server_args(
        backend_store_uri, host=host, port=port, artifacts_destination=artifacts_destination
    )
    env = server_env()
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(Path(log).open("w", encoding="utf-8")) if log else None
        server = start_server(
            args,
            env,
            cwd=cwd,
            stdout=output or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
        )
        try:
            wait_until_healthy(url, server, log, timeout)
            yield url, server
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
