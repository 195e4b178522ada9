"""Time the outbox sweep's lookup: through the outbox indexes, and by the SCAN it replaces.

Starts a Redis of its own (`redis-server --port 6390 --save '' --appendonly no`, in a
temporary folder), fills it with `--keys` records of the project's key layout (devices and
contacts spread over `--workspaces` workspaces) plus `--outbox` outbox records committed as the
worker commits them, then times, in one run, the lookup a sweep makes (`Outbox.find`: the
indexes of the configured workspaces, the namespace's SCAN flag set as it is between the daily
SCANs) and a SCAN for every outbox record (what every sweep made before the index), and prints
both and their ratio. The server is stopped at the end.

    .venv/bin/python scripts/outbox_sweep_bench.py --keys 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from pipeline.state.base import Commit, KeyKind, Keys, Store
from pipeline.state.redis_store import RedisStore
from pipeline.worker.outbox import Outbox
from pipeline.worker.processor import outbox_blob
from schemas.topics import MERGED

FILL = """
-- KEYS: none (a standalone server). ARGV: key prefix, first id, how many, data.
for i = tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1 do
  redis.call('HSET', ARGV[1] .. i, 'v', 1, 'd', ARGV[4])
end
return 0
"""
FILL_CALL = 10_000  # records per script call


def start_redis(port: int, folder: str) -> subprocess.Popen:
    """A Redis of the benchmark's own, without persistence, its files in `folder`."""
    command = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
               "--dir", folder, "--bind", "127.0.0.1"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


async def wait_for(client: aioredis.Redis, server: subprocess.Popen) -> None:
    """Return once the server answers PING (probing, 10 s at most)."""
    for _ in range(500):
        if server.poll() is not None:
            raise SystemExit(f"redis-server exited with {server.returncode} (is the port free?)")
        try:
            if await client.ping():
                return
        except (OSError, aioredis.ConnectionError):
            pass
        await asyncio.sleep(0.02)
    raise SystemExit("redis-server did not answer")


async def fill(client: aioredis.Redis, keys: Keys, workspaces: list[str], total: int) -> None:
    """`total` records, half devices and half contacts, spread evenly over the workspaces."""
    data = b'{"facts": [], "first": 1795514400000, "chats": []}' + b" " * 50  # ~100 B, as a device
    per_kind = total // 2
    sha = await client.script_load(FILL)
    made = 0
    kinds: tuple[KeyKind, ...] = ("dev", "contact")
    for kind in kinds:
        for index, ws in enumerate(workspaces):
            share = per_kind // len(workspaces) + (index < per_kind % len(workspaces))
            prefix = keys.of(ws, kind, "") + "id-"
            for start in range(0, share, FILL_CALL):
                count = min(FILL_CALL, share - start)
                await client.evalsha(sha, 0, prefix, start, count, data)
                made += count
    assert made == per_kind * 2


async def timed(call: Callable[[], Awaitable[list[str]]], rounds: int) -> tuple[float, list[str]]:
    """The median seconds of `rounds` calls, and what the last one found."""
    spent, found = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        found = await call()
        spent.append(time.perf_counter() - started)
    return statistics.median(spent), found


async def bench(args: argparse.Namespace) -> None:
    """Start the server, fill it, time both lookups and print them; stop the server."""
    folder = tempfile.mkdtemp(prefix="idp-outbox-bench-")
    server = start_redis(args.port, folder)
    url = f"redis://127.0.0.1:{args.port}/0"
    client = aioredis.Redis.from_url(url)
    store: Store = RedisStore.standalone(url, marker_ttl_s=3600)
    try:
        await wait_for(client, server)
        keys = Keys("idp")
        workspaces = [f"ws-{n}" for n in range(args.workspaces)]
        started = time.perf_counter()
        await fill(client, keys, workspaces, args.keys)
        filled = time.perf_counter() - started
        boxes = []
        for n in range(args.outbox):  # a dead worker's batches, committed as the worker does
            ws = workspaces[n % len(workspaces)]
            box = keys.outbox(ws, f"batch-{n}")
            blob = outbox_blob([(MERGED, b"c", b'{"event_id": "e"}')], time.time())
            assert await store.commit([Commit(checks={box: 0}, writes={box: blob})]) == [True]
            boxes.append(box)
        dbsize = await client.dbsize()

        async def send(topic: str, key: bytes | None, value: bytes | None) -> Awaitable[object]:
            raise AssertionError("the lookup sends nothing")

        outbox = Outbox(store, keys, send, workspaces=workspaces)
        await store.mark(keys.outbox_scan_marker(), 3600, only_new=False)  # between daily SCANs
        index_s, by_index = await timed(lambda: outbox.find(0.0), args.rounds)
        scan_s, by_scan = await timed(lambda: store.scan(keys.outbox_pattern()), args.scan_rounds)
        assert by_index == by_scan == sorted(boxes), (by_index, by_scan)
        print(f"redis 127.0.0.1:{args.port}: {dbsize:,} keys ({args.keys:,} dev/contact records "
              f"of {len(workspaces)} workspaces, {len(boxes)} outbox records; filled in "
              f"{filled:.1f}s); both lookups found the {len(boxes)} outbox records")  # fmt: skip
        print(f"index lookup (Outbox.find, {len(workspaces)} indexes): "
              f"{index_s * 1000:.3f} ms (median of {args.rounds})")  # fmt: skip
        print(f"SCAN MATCH {keys.outbox_pattern()}: {scan_s * 1000:.1f} ms "
              f"(median of {args.scan_rounds})")  # fmt: skip
        print(f"ratio: the SCAN takes {scan_s / index_s:,.0f}x as long as the index lookup")
    finally:
        await store.close()
        await client.aclose()
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    """Parse the options and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="dev/contact records")
    parser.add_argument("--workspaces", type=int, default=10)
    parser.add_argument("--outbox", type=int, default=5, help="undelivered outbox records")
    parser.add_argument("--port", type=int, default=6390)
    parser.add_argument("--rounds", type=int, default=50, help="index lookups timed")
    parser.add_argument("--scan-rounds", type=int, default=5, help="SCANs timed")
    args = parser.parse_args()
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
