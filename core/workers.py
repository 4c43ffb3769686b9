"""Worker processes that Ctrl-C stops at once. A process pool's workers share the terminal's process
group, so Ctrl-C reaches them too: each would count it as its task's failure and take the next
task, and the pool's exit would wait for every queued one. Here the workers ignore SIGINT; Ctrl-C
in the parent cancels the queued tasks and ends the workers, so ``interrupted`` comes at once (a
task in flight is lost, which costs nothing where results are written atomically,
:func:`neoseg.core.io.write_once`). An error in the block cancels the queued tasks and lets the
running ones end."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


@contextmanager
def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[ProcessPoolExecutor]:
    """A spawn-context ProcessPoolExecutor of ``workers`` processes (``initializer(*initargs)`` run in
    each), ended at once by Ctrl-C, and waited for otherwise (without its queued tasks after an error)."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start,
                               initargs=(initializer, initargs))
    try:
        yield pool
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in set(multiprocessing.active_children()) - before:
            worker.terminate()
            worker.join()
        pool.shutdown(wait=True)  # prompt now: lets the pool close its queues
        raise
    except BaseException:  # an error: the queued tasks are not started, those running end as they do
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _start(initializer: Callable | None, initargs: tuple) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C stops
    if initializer is not None:
        initializer(*initargs)
