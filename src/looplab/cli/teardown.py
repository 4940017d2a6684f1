"""The end of a command's process, without Python's collection of its whole heap.

At exit Python clears every module and collects the garbage of the whole heap, torch's,
MLflow's and pandas' included: about 0.8 s on a 2-core machine, after the command's work is
done (its runs ended, its files written and closed). Freezing the heap first (`gc.freeze`)
leaves those objects to the operating system; atexit handlers, the flushing of the standard
streams and of logging's files still run, and Python never promised `__del__` at exit.
"""

from __future__ import annotations

import gc


def skip_teardown() -> None:
    """Call last, once the command has done its work (in a `finally`)."""
    gc.freeze()
