"""Seconds per phase of a scan, wall clock and CPU (all threads of the process) side by side."""

from __future__ import annotations

import time


class PhaseClock:
    """Adds the time since the last switch to the phase that was running: ``clock("network")``
    starts the network's share, ``clock(None)`` stops. ``wall`` and ``cpu`` map phase -> seconds."""

    def __init__(self, wall: dict | None = None, cpu: dict | None = None):
        self.wall = {} if wall is None else wall
        self.cpu = {} if cpu is None else cpu
        self.phase: str | None = None
        self._wall = self._cpu = 0.0

    def __call__(self, phase: str | None) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        if self.phase is not None:
            self.wall[self.phase] = self.wall.get(self.phase, 0.0) + wall - self._wall
            self.cpu[self.phase] = self.cpu.get(self.phase, 0.0) + cpu - self._cpu
        self.phase, self._wall, self._cpu = phase, wall, cpu
