"""A real one-node SLURM cluster on this machine, for the tests that submit to it.

`slurm_cluster` (session-scoped) starts munged (as the munge user, with its own key, socket
and log), slurmctld and slurmd (as root, in the foreground), all from a throwaway folder:
slurm.conf names this host as both controller and node, with the CPUs and memory `slurmd -C`
finds, one partition `debug`, and state, spool and logs under the folder. It sets
`SLURM_CONF` in this process's environment for the session, so `sbatch`, `squeue` and
`scontrol`, from here or from any subprocess (submitit calls sbatch from the CLI's process),
talk to this cluster. At the end it cancels every job, stops the daemons, and kills what is
left of the jobs (slurmstepd and its children).

It skips, naming the missing piece, where slurm-wlm or munge is not installed or this
process is not root (the daemons run jobs as their user and must switch to it). A cluster
that a crashed session left behind (its daemons or jobs, found by the folder in their
environment) is killed first, and its folder removed.

Use it in a test file with `from slurm_cluster import slurm_cluster`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from looplab.core.signals import dying_with_parent
from looplab.server import free_port

# Every cluster's folder is named so; its daemons carry it in their environment, its jobs in
# SLURM_CONF, so that leftovers of a crashed session can be told from anything else.
PREFIX = "looplab-slurm-"
MARK = "LOOPLAB_SLURM_CLUSTER"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
READY_S = 60
# A job step's credential lifetime, which is also how long a requeued job stays PENDING
# (Reason=BeginTime) before it may run again: short, so that a requeue test does not wait.
CRED_EXPIRE_S = 10


@dataclass
class SlurmCluster:
    """What a test needs of the running cluster."""

    folder: Path  # the throwaway folder: slurm.conf, state, spool, logs
    conf: Path  # its slurm.conf (also in os.environ["SLURM_CONF"] for the session)
    node: str
    partition: str = "debug"

    def scontrol(self, *args: str) -> str:
        return _run("scontrol", *args)

    def jobs(self) -> list[str]:
        """Every job the controller still has pending or running, as `squeue` lists them."""
        return _run("squeue", "-h", "-o", "%i %T %j").splitlines()

    def log(self, daemon: str) -> str:
        """A daemon's log so far (munged, slurmctld, slurmd)."""
        path = self.folder / "log" / f"{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _run(program: str, *args: str, timeout: float = 30) -> str:
    done = subprocess.run(
        [program, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{program} {' '.join(args)}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def missing_piece() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    absent = [name for name in PROGRAMS if shutil.which(name) is None]
    if absent:
        return (
            f"slurm-wlm is not installed ({', '.join(absent)} missing): "
            "apt-get install slurm-wlm munge"
        )
    if os.geteuid() != 0:
        return "not root: the one-node SLURM cluster's slurmd must run jobs as their user"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "there is no `munge` user to run munged: apt-get install munge"
    return None


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def _processes_of(belongs) -> list[int]:
    """The processes (not this one) whose environment `belongs(environ)` claims."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid != os.getpid() and belongs(_environ(pid)):
            found.append(pid)
    return found


def _of_a_cluster(folder_is) -> object:
    """A test on an environment: a daemon of a cluster whose folder `folder_is`, or one of its
    jobs (sbatch passes the submitter's SLURM_CONF on)."""

    def belongs(environ: dict[str, str]) -> bool:
        if MARK in environ:
            return folder_is(environ[MARK])
        conf = environ.get("SLURM_CONF", "")
        return "SLURM_JOB_ID" in environ and PREFIX in conf and folder_is(str(Path(conf).parent))

    return belongs


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _start_time(pid: int) -> str | None:
    """When process `pid` started (in clock ticks since boot), or None if there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _orphaned(folder: str) -> bool:
    """Whether cluster folder `folder` is of a session that is gone: its owner (the pytest
    that started it, written in `owner`) no longer runs. Another live session's is not."""
    if not Path(folder).name.startswith(PREFIX):
        return False
    try:
        pid, started = (Path(folder) / "owner").read_text().split()
    except (OSError, ValueError):
        return True
    return _start_time(int(pid)) != started


def clear_crashed_clusters() -> None:
    """Kill the daemons and jobs of clusters that earlier sessions left (a crashed or killed
    pytest), and remove their folders, so that nothing stale answers on this host."""
    _kill(_processes_of(_of_a_cluster(_orphaned)))
    time.sleep(0.2)
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        if _orphaned(str(folder)):
            shutil.rmtree(folder, ignore_errors=True)


def _node_line(name: str, address: str) -> str:
    """This machine as slurmd finds it (CPUs, sockets, cores, RealMemory), named `name`."""
    found = _run("slurmd", "-C").splitlines()[0].split()
    keys = [item for item in found if not item.startswith(("NodeName=", "UpTime="))]
    return " ".join([f"NodeName={name}", f"NodeAddr={address}", *keys, "State=UNKNOWN"])


def write_conf(folder: Path, node: str) -> Path:
    """slurm.conf for a one-node cluster in `folder`, on two free ports."""
    log, state, spool, run = (folder / part for part in ("log", "state", "spool", "run"))
    for path in (log, state, spool, run):
        path.mkdir(parents=True, exist_ok=True)
    lines = [
        "ClusterName=looplab",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire: how long a requeued job waits before it may start again (SLURM's
        # default 120 s; each `scontrol requeue` test would wait that long).
        f"AuthInfo=socket={folder / 'munge-run' / 'munge.socket'},cred_expire={CRED_EXPIRE_S}",
        f"StateSaveLocation={state}",
        f"SlurmdSpoolDir={spool}",
        f"SlurmctldPidFile={run / 'slurmctld.pid'}",
        f"SlurmdPidFile={run / 'slurmd.pid'}",
        f"SlurmctldLogFile={log / 'slurmctld.log'}",
        f"SlurmdLogFile={log / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        # A job that becomes eligible by time (a requeued one) is started by the periodic
        # scheduling loops only (backfill every 30 s, the main one every 60 s by default).
        "SchedulerParameters=bf_interval=1,sched_interval=2",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "SlurmdTimeout=60",
        "KillWait=30",
        _node_line(node, "127.0.0.1"),
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf = folder / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    conf.chmod(0o644)
    return conf


def start_munged(folder: Path, env: dict[str, str]) -> subprocess.Popen:
    """munged as the munge user, in the foreground, with a key, socket and log of its own.
    munged checks its folders: the key's private to munge, the socket's open to all."""
    munge = pwd.getpwnam("munge")
    private, public = folder / "munge", folder / "munge-run"
    for path, mode in ((private, 0o700), (public, 0o755)):
        path.mkdir(mode=mode)
        os.chown(path, munge.pw_uid, munge.pw_gid)
        path.chmod(mode)
    key = private / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chown(key, munge.pw_uid, munge.pw_gid)
    key.chmod(0o400)
    command = [
        shutil.which("munged") or "munged",
        "--foreground",
        f"--key-file={key}",
        f"--socket={public / 'munge.socket'}",
        f"--pid-file={public / 'munged.pid'}",
        f"--log-file={private / 'munged.log'}",
        f"--seed-file={private / 'munged.seed'}",
    ]
    # As munge, and sent SIGTERM when this process dies (by SIGKILL too): util-linux's
    # setpriv does both (looplab's own `dying_with_parent` needs a Python that munge may run,
    # and a virtual environment's often points into /root).
    setpriv = shutil.which("setpriv")
    as_munge = ["--reuid", "munge", "--regid", "munge", "--clear-groups", "--pdeathsig", "TERM"]
    return subprocess.Popen(
        [setpriv, *as_munge, *command] if setpriv else command,
        user=None if setpriv else munge.pw_uid,
        group=None if setpriv else munge.pw_gid,
        env=env,
        stdout=(folder / "log" / "munged.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait(what: str, ready, processes: dict[str, subprocess.Popen], cluster: SlurmCluster):
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited ({process.returncode}) before {what}:\n{cluster.log(name)}"
                )
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if ready():
                return
        time.sleep(0.5)
    logs = "\n".join(f"--- {name}\n{cluster.log(name)[-3000:]}" for name in processes)
    raise RuntimeError(f"no {what} after {READY_S} s:\n{logs}")


def stop_jobs(cluster: SlurmCluster) -> None:
    """Cancel every job and wait (bounded: KillWait and a margin) until none is left."""
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        _run("scancel", "--full", f"--partition={cluster.partition}")
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        try:
            if not cluster.jobs():
                return
        except (RuntimeError, subprocess.TimeoutExpired):
            return
        time.sleep(0.5)


@contextlib.contextmanager
def one_node_cluster() -> Iterator[SlurmCluster]:
    """The cluster, up (its node idle), for the block; torn down after it."""
    clear_crashed_clusters()
    folder = Path(tempfile.mkdtemp(prefix=PREFIX))
    folder.chmod(0o755)  # munged requires every folder above its socket open to all
    (folder / "owner").write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    node = socket.gethostname().split(".")[0]
    conf = write_conf(folder, node)
    cluster = SlurmCluster(folder=folder, conf=conf, node=node)
    env = {**os.environ, "SLURM_CONF": str(conf), MARK: str(folder)}
    previous = os.environ.get("SLURM_CONF")
    processes: dict[str, subprocess.Popen] = {}
    try:
        processes["munged"] = start_munged(folder, env)
        socket_path = folder / "munge-run" / "munge.socket"
        _wait("munge socket", socket_path.exists, processes, cluster)
        for daemon in ("slurmctld", "slurmd"):
            # -D: foreground; slurmctld -i: ignore state from an earlier start (there is none).
            args = [
                shutil.which(daemon) or daemon,
                "-D",
                *(["-i"] if daemon == "slurmctld" else []),
            ]
            processes[daemon] = subprocess.Popen(
                dying_with_parent(args),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(folder / "log" / f"{daemon}.stderr").open("ab"),
                start_new_session=True,
            )
        os.environ["SLURM_CONF"] = str(conf)

        def idle() -> bool:
            return _run("sinfo", "-h", "-N", "-o", "%T", timeout=10).strip() == "idle"

        _wait(f"idle node {node} in `sinfo`", idle, processes, cluster)
        yield cluster
    finally:
        if "slurmctld" in processes:
            stop_jobs(cluster)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in processes and processes[name].poll() is None:
                processes[name].terminate()
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # What the daemons leave: slurmstepd and the jobs' processes, if any outlived scancel.
        _kill(_processes_of(_of_a_cluster(lambda found: found == str(folder))))
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster for the session (partition `debug`, this host's CPUs and
    memory); skips where slurm-wlm or munge is missing or we are not root."""
    reason = missing_piece()
    if reason:
        pytest.skip(reason)
    with one_node_cluster() as cluster:
        yield cluster
