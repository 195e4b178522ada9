"""Processes the tools start: `idp` commands in the background, stopped and measured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.ops.stack import PROJECT_ROOT


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a running process, all its threads (Linux `/proc`)."""
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
