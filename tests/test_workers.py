"""Worker processes that Ctrl-C stops at once (core.workers.process_pool)."""

import multiprocessing
import os
import signal
import time

import pytest

from neoseg.core.workers import process_pool


def _pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def test_an_interrupted_block_cancels_the_queue_and_ends_the_workers_at_once():
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with process_pool(2) as pool:
            futures = [pool.submit(_pid_after, 30) for _ in range(6)]  # 90 s of work if waited for
            time.sleep(1.5)  # the workers have started
            raise KeyboardInterrupt  # Ctrl-C in the parent
    assert time.monotonic() - started < 15
    assert not multiprocessing.active_children()  # no worker left behind
    assert sum(f.cancelled() for f in futures) >= 3  # the queued ones never started,
    assert all(f.cancelled() or f.exception(timeout=10) is not None for f in futures)  # nor finished


def test_workers_ignore_sigint_and_a_block_that_ends_normally_waits_for_them():
    with process_pool(1) as pool:
        pid = pool.submit(os.getpid).result()
        late = pool.submit(_pid_after, 1.0)
        os.kill(pid, signal.SIGINT)  # Ctrl-C reaching the worker's process group: its task goes on
        assert late.result() == pid
    assert not multiprocessing.active_children()
