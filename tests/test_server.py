"""`looplab server` and `tracking=server`: a real `mlflow server` on a free loopback port,
trained against with the real CLI, read back through MLflow's own client. No mocks.

The PostgreSQL test starts a throwaway cluster (Debian's `postgresql`: initdb and pg_ctl from
/usr/lib/postgresql/*/bin) in a temporary folder on 127.0.0.1; without it the test skips.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, free_port

from looplab.cli import main as looplab_main

LOOPLAB = str(Path(sys.executable).parent / "looplab")
QUICK = ["train.epochs=3", "train.print_every=0"]


@contextlib.contextmanager
def looplab_server(folder: Path, *options: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`looplab server --port FREE OPTIONS` as a user starts it; stopped with Ctrl-C."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [LOOPLAB, "server", "--port", str(port), *options],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{url}/health", timeout=2),
            ):
                break
            assert time.monotonic() < deadline, "looplab server never answered"
            time.sleep(0.3)
        yield url, server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)


def train(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], cwd=folder, capture_output=True, text=True, timeout=300)


def check_run(client, run, epochs: int) -> None:
    """A run as the server holds it: FINISHED, every epoch, its files proxied by the server."""
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
    assert steps == list(range(1, epochs + 1))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.csv", ".hydra"} <= names, names


def assert_hints_name_the_server(done, url: str, sweep: bool = False) -> None:
    """Faults: MLflow's own "View run" lines on the console (no [job N], the GenAI view); a
    closing line or a sweep's summary pointing at `looplab ui` (the local store) or at
    `looplab runs` without --tracking-uri; a link that opens MLflow's GenAI view."""
    assert "View run" not in done.stdout + done.stderr
    assert "View experiment" not in done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert "`looplab ui`" not in last
    assert f"{url}/#/experiments/" in last and last.endswith("?workflowType=machine_learning")
    if sweep:
        assert f"`looplab runs --last --tracking-uri {url}`" in last


@pytest.mark.slow
def test_looplab_server_with_basic_auth_takes_a_training_and_a_sweep(
    tmp_path: Path, monkeypatch
) -> None:
    """Faults: `looplab server` does not serve artifacts through itself (runs would get file:
    URIs the clients cannot reach), cannot start MLflow's basic-auth app as docs/scaling.md
    sets it up (the auth app missing from the `server` extra), lets a run without credentials
    train, the writer does not pass MLFLOW_TRACKING_USERNAME/PASSWORD on, tracking=server does
    not reach tracking.uri, a sweep's children are not linked to their parent on the server, or
    Ctrl-C leaves the server running."""
    from mlflow.tracking import MlflowClient

    settings = tmp_path / "auth.ini"
    settings.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    password = "a-long-test-password-2026"
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(settings))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", password)
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "test-secret")
    store = tmp_path / "store"
    with looplab_server(
        tmp_path,
        "--app-name",
        "basic-auth",
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
    ) as (url, server):
        anonymous = train(tmp_path, *QUICK, "tracking=server", f"tracking.uri={url}")
        assert anonymous.returncode == 1
        (line,) = anonymous.stderr.strip().splitlines()
        assert line.startswith("looplab-train: error: cannot use MLflow store"), line
        assert "401" in line and "Epoch" not in anonymous.stdout
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        single = train(tmp_path, *QUICK, "tracking=server", f"tracking.uri={url}")
        assert single.returncode == 0, single.stderr
        assert_hints_name_the_server(single, url)
        sweep = train(
            tmp_path, "-m", *QUICK, "model.width=0,2", "tracking=server", f"tracking.uri={url}"
        )
        assert sweep.returncode == 0, sweep.stderr
        assert_hints_name_the_server(sweep, url, sweep=True)
        client = MlflowClient(tracking_uri=url)
        experiment = client.get_experiment_by_name("looplab")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("looplab.role") == "sweep"]
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.params["model.width"] for r in children) == ["0", "2"]
        for run in [r for r in runs if r is not parent]:
            check_run(client, run, 3)
        assert len(runs) == 4
        assert parent.info.status == "FINISHED"
        assert "runs.csv" in {f.path for f in client.list_artifacts(parent.info.run_id)}
        assert not (tmp_path / "outputs" / "mlflow.db").exists()  # nothing went to a local store
        assert any((store / "artifacts").rglob("metrics.csv"))  # the server's artifact root
        os.killpg(server.pid, signal.SIGINT)
        assert server.wait(timeout=30) == 130
        assert f"tracking=server tracking.uri={url}" in server.stderr.read()


def test_server_refuses_a_public_interface_without_authentication(capsys) -> None:
    """Fault: `looplab server --host 0.0.0.0` exposes every run with no login."""
    assert looplab_main(["server", "--host", "0.0.0.0", "--port", str(free_port())]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("looplab: error: --host 0.0.0.0") and "basic-auth" in error
    assert len(error.splitlines()) == 1


@pytest.mark.slow
def test_tracking_server_without_a_uri_is_one_line(run_cli_fast) -> None:
    """Fault: `tracking=server` without tracking.uri trains into a local store, or crashes."""
    done = run_cli_fast("tracking=server", *QUICK)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "looplab-train: error: tracking.uri is missing: tracking=server needs "
        "tracking.uri=http://HOST:PORT (a running `mlflow server`, e.g. one started with "
        "`looplab server`)"
    ]


@pytest.fixture
def run_cli_fast(tmp_path: Path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return train(tmp_path, *args)

    return run


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 in a temporary folder: its database URI."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install -e '.[server]' (make test does)")
    bindir = Path(found[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="looplab-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as Debian's postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run PostgreSQL")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()

    def pg(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, timeout=120)

    data = folder / "data"
    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "looplab", "-A", "trust", "--no-sync")
        pg(
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {folder} -F",
            "start",
        )
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "looplab", "mlflow")
        yield f"postgresql://looplab@127.0.0.1:{port}/mlflow"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_postgresql_backed_server_takes_a_run(tmp_path: Path) -> None:
    """Faults: `looplab server` cannot use a PostgreSQL store (the driver missing from the
    `server` extra, the URI mangled), or the run does not land in it whole."""
    from mlflow.tracking import MlflowClient

    with (
        postgres_cluster() as database,
        looplab_server(
            tmp_path,
            "--backend-store-uri",
            database,
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ) as (url, _),
    ):
        done = train(tmp_path, *QUICK, "tracking=server", f"tracking.uri={url}")
        assert done.returncode == 0, done.stderr
        client = MlflowClient(tracking_uri=url)
        (run,) = client.search_runs([client.get_experiment_by_name("looplab").experiment_id])
        check_run(client, run, 3)
        # The runs are in PostgreSQL itself, not in some file beside the server.
        direct = MlflowClient(tracking_uri=database)
        (same,) = direct.search_runs([direct.get_experiment_by_name("looplab").experiment_id])
        assert same.info.run_id == run.info.run_id
