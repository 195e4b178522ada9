"""What the benchmarks read of a process: its CPU time, all threads, finer than a clock tick."""

from __future__ import annotations

import os
import threading
import time

from pipeline.ops.processes import cpu_seconds


def _spin(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def test_cpu_seconds_counts_every_live_thread() -> None:
    # Two threads each spin 30 ms of CPU: 60 ms in all, which ticks of 10 ms would round to
    # 50, 60 or 70. The process's own account (`os.times`) is the reference.
    spun, measured = threading.Event(), threading.Event()

    def spinner() -> None:
        _spin(0.03)
        spun.set()
        measured.wait()  # alive, without CPU, until measured: an ended thread's time goes

    before, times = cpu_seconds(os.getpid()), os.times()
    thread = threading.Thread(target=spinner)
    thread.start()
    _spin(0.03)
    spun.wait()
    spent = cpu_seconds(os.getpid()) - before
    own = os.times()
    measured.set()
    thread.join()
    assert spent >= 0.06
    # os.times is in ticks too: within two of them of what it counts.
    assert abs(spent - (own.user + own.system - times.user - times.system)) <= 0.02


def test_cpu_seconds_is_finer_than_a_clock_tick() -> None:
    # 3 ms of CPU: a count in ticks of 10 ms says 0 or 10.
    before = cpu_seconds(os.getpid())
    _spin(0.003)
    spent = cpu_seconds(os.getpid()) - before
    assert 0.003 <= spent < 0.009
