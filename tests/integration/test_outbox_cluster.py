"""The outbox index on a real Redis Cluster (three masters, a replica each).

The cluster is started for the module by the project's own stack, on ports of its own (apart
from `idp stack up`'s 7000 and `test_cluster.py`'s 17000) under a temporary folder, and stopped
at the end; if it cannot start, every test fails. The store contract's outbox tests run on it
as they run on a standalone Redis, and a sweep finds the records of workspaces on every master.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.crc import key_slot

from pipeline.ops import stack
from pipeline.ops.admin import remove_keys
from pipeline.state.base import Commit, Keys, Store
from pipeline.state.cluster_store import ClusterRedisStore
from pipeline.state.factory import open_store
from tests.integration.test_store_contract import (
    test_a_commit_lists_its_outbox_record_in_the_workspace_index,
    test_a_commit_that_loses_lists_nothing,
    test_a_flag_is_written_once_until_it_expires,
    test_the_index_lists_only_the_undelivered_records,
)

pytestmark = pytest.mark.integration

REDIS_PORT, MASTERS = 17100, 3

__all__ = [  # the contract's outbox tests, collected here on the cluster's store
    "test_a_commit_lists_its_outbox_record_in_the_workspace_index",
    "test_a_commit_that_loses_lists_nothing",
    "test_a_flag_is_written_once_until_it_expires",
    "test_the_index_lists_only_the_undelivered_records",
]


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("outbox-cluster")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack, "cluster_dir", lambda: home)
        patch.setattr(stack, "CLUSTER_REDIS_PORT", REDIS_PORT)
        try:
            stack.start_redis_cluster(MASTERS)
        except stack.StackError as exc:
            stack.stop_cluster()
            pytest.fail(f"the Redis Cluster did not start: {exc}", pytrace=False)
        try:
            yield stack.cluster_redis_url()
        finally:
            stack.stop_cluster()


@pytest.fixture
async def store(cluster_url: str) -> AsyncIterator[Store]:
    opened = open_store(cluster_url, marker_ttl_s=3600, wait_replicas=1)
    assert isinstance(opened, ClusterRedisStore)
    yield opened
    await opened.close()


def workspaces_on_every_master() -> list[str]:
    """Workspaces whose slots fall in each third of the slots (one master each, here)."""
    chosen: dict[int, str] = {}
    index = 0
    while len(chosen) < MASTERS:
        ws = f"ws-{index}"
        chosen.setdefault(key_slot(ws.encode()) * MASTERS // 16384, ws)
        index += 1
    return sorted(chosen.values())


async def test_every_master_answers_one_sweep_lookup(cluster_url: str, store: Store) -> None:
    keys = Keys(f"c{uuid.uuid4().hex[:8]}")
    spread = workspaces_on_every_master()
    boxes = [keys.outbox(ws, "b1") for ws in spread]
    devices = [keys.of(ws, "dev", "a1") for ws in spread]
    commits = [Commit(checks={d: 0, b: 0}, writes={d: b"d", b: b"o"})
               for d, b in zip(devices, boxes, strict=True)]  # fmt: skip
    assert await store.commit(commits) == [True] * MASTERS
    indexes = [keys.outbox_index(ws) for ws in spread]
    later = time.time() + 1
    assert await store.indexed(indexes, until=later) == sorted(boxes)
    # Delivered: deleted with a read (the first two) and by a delete, on their masters.
    assert len(await store.read(devices, discard=boxes[:2])) == MASTERS
    assert await store.indexed(indexes, until=later) == [boxes[2]]
    await store.delete(boxes[2:])
    assert await store.indexed(indexes, until=later) == []
    assert await store.scan(keys.everything()) == sorted(devices)  # the indexes are gone
    flag = keys.outbox_scan_marker()
    assert await store.mark(flag, 60, only_new=True)
    assert not await store.mark(flag, 60, only_new=True)
    await store.delete([flag])
    await remove_keys(cluster_url, keys.namespace)
