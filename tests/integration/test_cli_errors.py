"""The `idp` command against missing servers and files, and the worker's JSON logs.

A broker or Redis that does not answer, or a secrets file that does not exist, is one line on
stderr and exit code 2, never a traceback, within a bounded time. The worker started with
`IDP_LOG_FORMAT=json` against the real broker and Redis writes nothing but JSON lines.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import orjson

from tests.support.kafka import PROJECT_ROOT, Pipeline


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _idp(*argv: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str, float]:
    """(exit code, stderr, seconds) of one `idp` run."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline.cli", *argv, cwd=PROJECT_ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, err.decode(), time.monotonic() - started


def _one_line(err: str, prefix: str) -> str:
    """The error line, after the worker's own log lines (it logs what it waits for)."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(errors) == 1, err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    return errors[0]


async def test_missing_servers_and_files_are_one_line_and_exit_2(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    closed = _closed_port()
    no_kafka = {**pipeline.env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closed}"}
    no_redis = {**pipeline.env, "REDIS_URL": f"redis://127.0.0.1:{closed}/0"}
    no_file = {**pipeline.env, "IDP_SECRETS_FILE": str(tmp_path / "missing.json")}
    runs = await asyncio.gather(
        _idp("worker", env=no_kafka),
        _idp("worker", env=no_redis),
        _idp("worker", env=no_file),
        _idp("topics", env=no_kafka),
        _idp("inspect", "ws-a", "someone", env=no_redis),
        _idp("inspect", "ws-a", "someone", "--html", str(tmp_path / "p.html"), env=no_redis),
    )
    (worker_k, worker_r, worker_f, topics_k, inspect_r, html_r) = runs
    for code, _, seconds in runs:
        assert code == 2 and seconds < 40
    line = _one_line(worker_k[1], "idp worker: ")
    assert f"no Kafka broker answers at 127.0.0.1:{closed}" in line and "Redis" not in line
    line = _one_line(worker_r[1], "idp worker: ")
    assert f"no Redis answers at redis://127.0.0.1:{closed}/0" in line and "Kafka" not in line
    line = _one_line(worker_f[1], "idp worker: ")
    assert "missing.json" in line and "No such file" in line
    assert worker_f[2] < 10  # no waiting for servers when the configuration is wrong
    assert "no Kafka broker answers" in _one_line(topics_k[1], "idp topics: ")
    for _, err, seconds in (inspect_r, html_r):
        assert "no Redis answers" in _one_line(err, "idp inspect: ") and seconds < 10
    assert not (tmp_path / "p.html").exists()


async def test_the_worker_logs_json_lines(pipeline: Pipeline) -> None:
    pipeline.start_worker({"IDP_LOG_FORMAT": "json"})
    deadline = time.monotonic() + 60
    while "Worker]: Ready" not in pipeline.worker_log():
        assert time.monotonic() < deadline, pipeline.worker_log()
        assert pipeline.workers[0].poll() is None, pipeline.worker_log()
        await asyncio.sleep(0.1)
    pipeline.stop_workers()
    log = (pipeline.log_dir / "worker-0.log").read_text()
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) > 10
    for line in lines:
        fields = orjson.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= fields.keys(), line
        assert fields["time"].endswith("Z")
    messages = [orjson.loads(line)["message"] for line in lines]
    assert any(m.endswith("Worker]: Ready") for m in messages)
