"""Running the generator's independent tasks in worker processes, as ``sphinx-build -j`` does.

Rendering is pure Python, so threads would share one interpreter lock; processes do not. Workers are
forked, on Linux only: they inherit the renderer and everything it prepared, so nothing but the task's
number goes to a worker and nothing but its files come back. Elsewhere (macOS and Windows start
processes by spawning, which would re-import and re-validate everything), with ``jobs`` 1, or in a
process that runs other threads, the tasks run here, in order; the files are the same either way (a
test compares them).

Forking a process that runs other threads can deadlock on a lock a thread held at the fork, so the
mkdocs hook (inside ``mkdocs serve``, which runs a server thread) always renders with ``jobs=1``;
``moekb build`` runs single-threaded and uses every CPU it may. ``concurrent.futures`` rather than
``multiprocessing.Pool``: a worker that dies (killed for memory, say) fails the build with
``BrokenProcessPool`` instead of leaving it waiting forever.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor

Task = Callable[[], dict]

_TASKS: Sequence[Task] = ()  # the tasks of the render in progress, inherited by forked workers


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def can_fork() -> bool:
    return sys.platform == "linux" and threading.active_count() == 1


def _ignore_interrupts() -> None:
    # Ctrl-C reaches the whole process group: the parent stops the run, the workers finish their task quietly
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(index: int) -> dict:
    return _TASKS[index]()


def run_tasks(tasks: Sequence[Task], jobs: int = 1) -> Iterator[dict]:
    """Each task's result, in the order of ``tasks``, as soon as it and those before it are done;
    with ``jobs`` > 1 (and forking possible) the tasks run in ``jobs`` forked worker processes while
    the caller consumes the results. A task's exception is raised here, and no further task starts."""
    global _TASKS
    jobs = min(jobs, len(tasks))
    if jobs <= 1 or not can_fork():
        yield from (task() for task in tasks)
        return
    _TASKS = tasks
    executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_ignore_interrupts)
    try:
        yield from executor.map(_run, range(len(tasks)))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        _TASKS = ()
