"""The signals that stop a looplab process, handled in one place.

Ctrl-C (SIGINT) raises KeyboardInterrupt, as Python does; SIGTERM and SIGHUP (the terminal
went away: a dropped SSH session, a closed window) raise `Terminated`, so a run ends as
KILLED with every epoch delivered whichever of the three arrives. A terminal that closes
may send SIGHUP twice (the shell passes it on, then the kernel hangs the terminal up), so
a second SIGHUP is never taken as a second Ctrl-C.

While the loop trains (`StopsBetweenSteps`), a stop is held until the loop is between two
steps, so that the checkpoint taken then is a state the run really passed through; SLURM's
warning signals (`--signal`, submitit's USR2 before a time limit or a preemption) stop it
there too, and a handler that was there before them (submitit's requeue) gets them after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
from collections.abc import Iterator

from looplab.core.errors import Terminated

# Raise `Terminated` while a run or a server is in progress; SIGINT is Python's own.
STOPS = (signal.SIGTERM, signal.SIGHUP)
# Every signal that asks a looplab process to stop, for what must not be cut by one.
ALL_STOPS = (signal.SIGINT, *STOPS)
# What a scheduler sends before it stops a job (SLURM's `--signal`; submitit asks for USR2).
WARNINGS = (signal.SIGUSR1, signal.SIGUSR2)


def _raise_terminated(signum: int, _frame: object) -> None:
    if signum == signal.SIGHUP:
        detach_hung_up_terminal()
    raise Terminated(signum)


@contextlib.contextmanager
def stops_raise() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into `Terminated` (and SIGINT into KeyboardInterrupt, even
    where a shell started us with it ignored) while the block runs. SIGHUP stays ignored
    where it was (`nohup`)."""
    handlers = {signal.SIGINT: signal.default_int_handler}
    handlers |= {signum: _raise_terminated for signum in STOPS}
    if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN:  # `nohup`: the user asked to stay
        del handlers[signal.SIGHUP]
    previous = [(signum, signal.signal(signum, handler)) for signum, handler in handlers.items()]
    try:
        yield
    finally:
        for signum, handler in previous:
            signal.signal(signum, handler)


def _stop(signum: int) -> BaseException:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


class StopsBetweenSteps:
    """A stop signal held until `check` (the loop calls it between two steps), then raised
    there; `between_steps` says that it was. A second Ctrl-C or SIGTERM raises at once, a
    second SIGHUP is ignored. SIGHUP and the warnings stay ignored where they were (`nohup`).
    """

    def __init__(self) -> None:
        self.pending: BaseException | None = None
        self.between_steps = False  # the stop was raised by `check`: the state is whole
        self.signum: int | None = None  # the signal that stopped the run
        self.previous: dict[int, object] = {}

    def __enter__(self) -> StopsBetweenSteps:
        for signum in (*ALL_STOPS, *WARNINGS):
            handler = signal.getsignal(signum)
            if signum != signal.SIGINT and handler == signal.SIG_IGN:
                continue
            self.previous[signum] = signal.signal(signum, self._hold)
        return self

    def __exit__(self, kind: type | None, *_exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if kind is None:
            self.check()  # a stop during the last epoch's end: the run stops there

    def _hold(self, signum: int, _frame: object) -> None:
        if self.pending is not None or self.between_steps:
            if signum == signal.SIGHUP:
                return  # the same closed terminal again
            self.between_steps = False
            raise _stop(signum)  # impatient: at once, mid-step
        if signum == signal.SIGHUP:
            detach_hung_up_terminal()
        self.signum, self.pending = signum, _stop(signum)

    def check(self) -> None:
        """Raise the stop that came since the last step, now that the loop is between two."""
        if self.pending is not None:
            stop, self.pending = self.pending, None
            self.between_steps = True
            raise stop

    def pass_on(self) -> None:
        """Hand the warning that stopped the run to the handler that was there before it
        (submitit's: requeue the job, then exit), once the run is closed."""
        if not self.between_steps:  # held but never taken: the run ended otherwise
            return
        previous = self.previous.get(self.signum) if self.signum in WARNINGS else None
        if callable(previous):
            signal.signal(self.signum, previous)  # type: ignore[arg-type]
            os.kill(os.getpid(), self.signum)


def while_closing(leave: bool) -> None:
    """While a stopped run or server closes its records: a second Ctrl-C or SIGTERM leaves at
    once with 128 + signal (`leave`; the MLflow writers then end the runs KILLED on their
    own) or is ignored; a second SIGHUP is always ignored."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _leave_at_once if leave else signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def _leave_at_once(signum: int, _frame: object) -> None:
    os._exit(128 + signum)


def ignore_stops() -> None:
    """For a helper process (the MLflow writer) that its parent tells when to end: the
    terminal's signals reach it too, and SLURM's warnings reach every process of a job (their
    default action kills), and none must cut what it still has to deliver."""
    for signum in (*ALL_STOPS, *WARNINGS):
        signal.signal(signum, signal.SIG_IGN)


def detach_hung_up_terminal() -> None:
    """Point stdout and stderr at /dev/null when they are a terminal that has hung up (a
    hung-up terminal is a character device that no longer answers as a terminal): writing
    there fails with EIO, which would cut the run's closing short. Output that goes
    anywhere else (a file, a pipe, a terminal still open) is left as it is."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            fd = stream.fileno()
            if stat.S_ISCHR(os.fstat(fd).st_mode) and not os.isatty(fd):
                with contextlib.suppress(OSError):
                    stream.flush()
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, fd)
                os.close(null)


# Run by a fresh interpreter before it becomes the command: ask the kernel for the signal
# when the parent dies (prctl PR_SET_PDEATHSIG, kept across exec), leave at once if the parent
# is gone already, then exec the command. A wrapper rather than Popen's preexec_fn, which is
# unsafe in a process with threads.
_PDEATHSIG = """import ctypes, os, sys
signum, parent = int(sys.argv[1]), int(sys.argv[2])
ctypes.CDLL(None).prctl(1, signum, 0, 0, 0)
if os.getppid() != parent:
    os.kill(os.getpid(), signum)
os.execvp(sys.argv[3], sys.argv[3:])
"""


def dying_with_parent(args: list[str], signum: int = signal.SIGTERM) -> list[str]:
    """`args` as a command that the kernel sends `signum` when this process dies, even by
    SIGKILL, so that it cannot outlive us (Linux). Elsewhere `args` unchanged: our own
    cleanup on a signal is then all there is."""
    if not sys.platform.startswith("linux"):
        return args
    return [sys.executable, "-c", _PDEATHSIG, str(int(signum)), str(os.getpid()), *args]
