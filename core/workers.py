"""Worker processes that Ctrl-C stops at once. A process pool's workers share the terminal's process
group, so Ctrl-C reaches them too: each would count it as its task's failure and take the next
task, and the pool's exit would wait for every queued one. Here the workers ignore SIGINT, and a
block that fails or is interrupted cancels the queued tasks and ends the workers, so the error (or
``interrupted``) comes at once; a task in flight is lost, which costs nothing where results are
written atomically (:func:`neoseg.core.io.write_once`)."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


@contextmanager
def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context ProcessPoolExecutor of ``workers`` processes (``initializer(*initargs)`` run in
    each) that is ended at once when the block raises, Ctrl-C included, and waited for otherwise."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                               initargs=(initializer, initargs))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in set(multiprocessing.active_children()) - before:
            worker.terminate()
            worker.join()
        raise
    pool.shutdown(wait=True)


def _start(initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    if initializer is not None:
        initializer(*initargs)
