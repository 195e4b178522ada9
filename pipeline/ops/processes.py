"""Processes the tools start: `idp` commands in the background, stopped and measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.ops.stack import PROJECT_ROOT


def cpu_seconds(pid: int) -> float:
    """CPU time of a running process, all its threads (Linux `/proc`), to the nanosecond.

    The sum of its threads' time on a CPU (`/proc/PID/task/*/schedstat`): `/proc/PID/stat`
    counts in clock ticks (10 ms), as much as a short measurement's whole figure. Without
    schedstat (a kernel built without it), the ticks. A thread that ends takes its time with
    it: the processes measured keep theirs.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile (or no schedstat)
    if total > 0:
        return total / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(command: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    """Run `idp <command>` (words separated by spaces) in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *command.split()],
        cwd=PROJECT_ROOT, env={**os.environ, **env},
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 30 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
