"""A real `mlflow server`: its command line (for `looplab server`) and a local one in a
subprocess for the tests and `make bench`.

One place, so `looplab server`, the tests and the benchmark start the server the same way.
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
) -> list[str]:
    """`python -m mlflow server` serving artifacts through itself (`mlflow-artifacts:`), so a
    client needs nothing but the server's URL to log and read a run's files."""
    args = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri]
    args += ["--host", host, "--port", str(port), "--workers", str(workers), "--serve-artifacts"]
    if artifacts_destination is not None:
        args += ["--artifacts-destination", str(artifacts_destination)]
    if app_name:
        args += ["--app-name", app_name]
    return args


def server_env(jobs: bool = False) -> dict[str, str]:
    """The server's environment: MLflow's job runner (GenAI jobs, extra processes) off
    unless asked for, no telemetry."""
    return {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if jobs else "false",
    }


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
    collects the server's output (else it is discarded). Raises RuntimeError when the
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
        server = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if output else subprocess.DEVNULL,
            start_new_session=True,  # its workers share a process group killed at once
        )
        try:
            _wait_until_healthy(url, server, timeout, log)
            yield url, server
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def _wait_until_healthy(
    url: str, server: subprocess.Popen, timeout: float, log: str | Path | None
) -> None:
    where = f"; see {log}" if log else ""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {server.returncode}{where}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not answer on {url} in {timeout:.0f} s{where}")
        time.sleep(0.3)
