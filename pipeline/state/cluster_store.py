"""The Redis Cluster Store: the standalone store's scripts, sent to the master of each slot.

A workspace is one hash tag, so one slot, so one master: each read or commit call of the
standalone store (one script call per workspace) goes unchanged to the master owning its
slot. Calls are grouped by master and each group is one pipelined round trip on one of that
master's connections, all masters at once. Redirections (MOVED after a failover or a slot
migration, ASK during one), a script the master does not have (a promoted replica) and a
cluster that is briefly down are handled here; a master that does not answer is reported as a
`ConnectionError`, which the worker already treats as "Redis away, retry" (and a commit whose
reply was lost as "in doubt", its outputs sent from its outbox record).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.state.redis_store import (
    COMMIT_LUA,
    CONNECT_TIMEOUT_S,
    READ_LUA,
    REPLY_TIMEOUT_S,
    RedisStore,
    _HiredisPacking,
    discard_commands,
    exchange,
)

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 8  # rounds of MOVED / ASK / NOSCRIPT / TRYAGAIN within one call
TRANSIENT_PAUSE_S = 0.05  # before retrying a slot that is migrating or a cluster that is down


class ClusterUnavailable(RedisConnectionError):
    """The cluster could not serve a call (no master for a slot, still failing over)."""


class ClusterRedisStore(RedisStore):
    """Versioned records in a Redis Cluster: one round trip per master per read or commit.

    `wait_replicas` > 0 makes every commit wait (`WAIT`, on the connection that ran it) until
    that many replicas of its master have it, or `wait_timeout_ms` passed: replication is
    asynchronous, and a commit acknowledged by a master that dies before its replica has it
    is lost with it. A master found short of replicas is not waited on until ROLE lists them
    again (a commit is never held back by a replica that is down). See docs/clusters.md.
    """

    one_slot_per_call = True  # a script runs on the master of its keys' one slot

    def __init__(
        self,
        client: RedisCluster,
        *,
        marker_ttl_s: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        super().__init__(client, marker_ttl_s=marker_ttl_s)  # type: ignore[arg-type]
        self._cluster = client
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._refresh = True  # load the slot map before the first call
        self._topology = 0  # slots found served by another master than before (`topology`)
        # Every node ever seen: redis-py forgets its startup nodes when a refresh fails (a
        # master just died), and the node of the URL may be the one that is down.
        self._known: set[tuple[str, int]] = {
            (node.host, int(node.port)) for node in client.nodes_manager.startup_nodes.values()
        }
        self._scripted: set[tuple[str, str]] = set()  # (node, sha) known to have the script
        self._degraded: set[str] = set()  # masters last seen with fewer replicas than asked
        self.under_replicated = 0  # commit round trips that reached fewer replicas than asked

    @classmethod
    def cluster_from_url(
        cls, url: str, *, marker_ttl_s: int, wait_replicas: int = 0, wait_timeout_ms: int = 1000
    ) -> ClusterRedisStore:
        """Connect lazily to the cluster that the node at `url` belongs to."""
        client = RedisCluster.from_url(
            url, socket_timeout=REPLY_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S
        )
        # Whichever class the URL chose (TCP or TLS), packing in C (see `_HiredisPacking`);
        # the nodes met later are built from the same keyword arguments.
        kwargs = client.connection_kwargs
        base = kwargs["connection_class"]
        kwargs["connection_class"] = type(base.__name__, (_HiredisPacking, base), {})
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = kwargs["connection_class"]
        return cls(client, marker_ttl_s=marker_ttl_s, wait_replicas=wait_replicas,
                   wait_timeout_ms=wait_timeout_ms)  # fmt: skip

    async def _run(
        self, script: str, calls: list[tuple[list[str], list]], *, unlink: Sequence[str] = ()
    ) -> list:
        """EVALSHA each call on the master of its slot (and UNLINK `unlink`), one round trip each.

        The SHA1 of a script is known without asking Redis; a master that lacks the script
        (restarted, or a replica just promoted) answers NOSCRIPT without running anything, gets
        SCRIPT LOAD and the call again.
        """
        sha = hashlib.sha1(script.encode()).hexdigest()
        commands: list[tuple[int, tuple]] = [
            (key_slot(keys[0].encode()), ("EVALSHA", sha, len(keys), *keys, *args))
            for keys, args in calls
        ]
        commands += [(key_slot(cmd[1].encode()), cmd) for cmd in discard_commands(unlink)]
        replies = await self._cluster_round_trip(
            commands, script=script, sha=sha, wait=script is COMMIT_LUA
        )
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies[: len(calls)]

    async def _cluster_round_trip(
        self, commands: list[tuple[int, tuple]], *, script: str, sha: str, wait: bool
    ) -> list:
        """Send each (slot, command) to its master, all masters at once; replies in order."""
        client = self._cluster
        if self._refresh:
            await self._refresh_slots()
            self._refresh = False
        replies: list = [None] * len(commands)
        pending = list(range(len(commands)))
        asking: dict[int, ClusterNode] = {}
        for _ in range(MAX_REDIRECTS):
            groups: dict[str, tuple[ClusterNode, list[int]]] = {}
            for index in pending:
                try:
                    node = asking.get(index) or client.nodes_manager.get_node_from_slot(
                        commands[index][0]
                    )
                except SlotNotCoveredError as exc:
                    self._refresh = True
                    message = f"no master serves slot {commands[index][0]}"
                    raise ClusterUnavailable(message) from exc
                groups.setdefault(node.name, (node, []))[1].append(index)
            results = await asyncio.gather(
                *(
                    self._node_round_trip(
                        node, [commands[i][1] for i in indexes],
                        script=script, sha=sha, asking=indexes[0] in asking, wait=wait,
                    )
                    for node, indexes in groups.values()
                ),
                return_exceptions=True,
            )  # fmt: skip
            failure = next((r for r in results if isinstance(r, BaseException)), None)
            if failure is not None:
                if isinstance(failure, (RedisConnectionError, RedisTimeoutError, OSError)):
                    self._refresh = True  # a master may be gone: ask the cluster who serves now
                raise failure
            pending, asking, pause = [], {}, False
            for (node, indexes), node_replies in zip(groups.values(), results, strict=True):
                assert not isinstance(node_replies, BaseException)  # raised above
                for index, reply in zip(indexes, node_replies, strict=True):
                    replies[index] = reply
                    if isinstance(reply, MovedError):
                        await client.nodes_manager.move_slot(reply)
                        self._topology += 1
                        pending.append(index)
                    elif isinstance(reply, AskError):
                        asking[index] = _node_at(client, reply.host, reply.port)
                        pending.append(index)
                    elif isinstance(reply, NoScriptError):
                        self._scripted.discard((node.name, sha))
                        pending.append(index)
                    elif isinstance(reply, (TryAgainError, ClusterDownError)):
                        pending.append(index)
                        pause = True
            if not pending:
                return replies
            if pause:
                self._refresh = True
                await asyncio.sleep(TRANSIENT_PAUSE_S)
                await self._refresh_slots()
        message = f"the cluster kept redirecting or refusing: {replies[pending[0]]}"
        raise ClusterUnavailable(message)

    async def _node_round_trip(
        self, node: ClusterNode, commands: list[tuple], *, script: str, sha: str, asking: bool,
        wait: bool,
    ) -> list:  # fmt: skip
        """One pipelined round trip to one master; its replies (error replies as values).

        Commits are followed by WAIT on the same connection when replicas are asked for: WAIT
        counts the replicas that acknowledged this connection's writes.
        """
        sent: list[tuple] = []
        load = (node.name, sha) not in self._scripted  # decided once: calls run concurrently
        if load:
            sent.append(("SCRIPT LOAD", script))
        for command in commands:
            if asking:
                sent.append(("ASKING",))
            sent.append(command)
        waits = wait and self._wait_replicas > 0
        if waits:
            # A master without its replicas (one just promoted, its old master not back yet)
            # would make every commit wait the whole timeout: ask ROLE instead until they are.
            degraded = node.name in self._degraded
            sent.append(("ROLE",) if degraded else
                        ("WAIT", self._wait_replicas, self._wait_timeout_ms))  # fmt: skip
        connection = node.acquire_connection()
        try:
            raw = await exchange(connection, sent)
        finally:
            node.release(connection)
        if load:
            loaded = raw.pop(0)
            if isinstance(loaded, ResponseError):
                raise loaded
            self._scripted.add((node.name, sha))
        if waits:
            answer = raw.pop()
            if degraded:
                if isinstance(answer, list) and len(answer) > 2:
                    if len(answer[2]) >= self._wait_replicas:
                        self._degraded.discard(node.name)
                self.under_replicated += 1
            elif isinstance(answer, int) and answer < self._wait_replicas:
                self.under_replicated += 1
                self._degraded.add(node.name)
                _warn_under_replicated(node.name, answer, self._wait_replicas)
        if asking:
            raw = raw[1::2]  # the reply of each command, not of its ASKING
        return raw

    @property
    def topology(self) -> int:
        """See `Store.topology`: counted when a refreshed slot map or a MOVED shows it."""
        return self._topology

    def _owners(self) -> dict[int, str]:
        """Slot -> the name of the master serving it, as the client knows it now."""
        cache = self._cluster.nodes_manager.slots_cache
        return {slot: nodes[0].name for slot, nodes in cache.items() if nodes}

    async def _refresh_slots(self, *, unless_loaded: bool = False) -> None:
        """Load the slot map from any node that answers (first use, a failover, a MOVED)."""
        client = self._cluster
        if unless_loaded and not client._initialize:  # redis-py's "must load" flag
            return
        before = self._owners()
        known = sorted(self._known)
        try:
            if client._initialize:
                await client.initialize(additional_startup_nodes_info=known)
            else:
                await client.nodes_manager.initialize(additional_startup_nodes_info=known)
        except (RedisConnectionError, RedisTimeoutError, OSError, RedisClusterException) as exc:
            message = f"no node of the cluster could tell who serves the slots ({exc})"
            raise ClusterUnavailable(message) from exc
        self._known |= {(n.host, int(n.port)) for n in client.nodes_manager.nodes_cache.values()}
        after = self._owners()
        if before and any(after.get(slot) != owner for slot, owner in before.items()):
            self._topology += 1

    async def _commands(self, commands: list[tuple]) -> list:
        """Each command on the master of its key's slot, all masters at once; their replies.

        A master's commands go in order on one of its connections (an UNLINK before the ZREM
        that unlists what it deleted, `discard_commands`).
        """
        sha = hashlib.sha1(READ_LUA.encode()).hexdigest()  # loaded on the way, if need be
        routed = [(key_slot(str(cmd[1]).encode()), cmd) for cmd in commands]
        replies = await self._cluster_round_trip(routed, script=READ_LUA, sha=sha, wait=False)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise reply
        return replies

    async def scan(self, pattern: str) -> list[str]:
        """SCAN every master for keys matching `pattern`."""
        found: set[str] = set()
        await self._refresh_slots(unless_loaded=True)
        async with _unavailable_as_connection_error():
            for node in self._cluster.get_primaries():
                async for key in self._cluster.scan_iter(
                    match=pattern, count=1000, target_nodes=node
                ):
                    found.add(key.decode())
        return sorted(found)

    async def ping(self) -> bool:
        """Whether every master answers."""
        await self._refresh_slots(unless_loaded=True)
        async with _unavailable_as_connection_error():
            replies = await self._cluster.ping(target_nodes=RedisCluster.PRIMARIES)
        return bool(replies)

    async def close(self) -> None:
        """Close every node's connections."""
        await self._cluster.aclose()


@contextlib.asynccontextmanager
async def _unavailable_as_connection_error() -> AsyncIterator[None]:
    """A cluster that cannot serve (no node reachable, failing over) is "Redis away" to callers.

    redis-py raises `RedisClusterException` or `ClusterDownError` there, which the worker
    would take for a bug; its retry-while-away path expects a `ConnectionError`.
    """
    try:
        yield
    except (RedisClusterException, ClusterDownError, TryAgainError) as exc:
        raise ClusterUnavailable(str(exc)) from exc


def _node_at(client: RedisCluster, host: str, port: int) -> ClusterNode:
    """The node at host:port (an ASK target), known to the client or added to it."""
    node = client.get_node(host=host, port=port)
    if node is None:
        node = ClusterNode(host, port, **client.nodes_manager.connection_kwargs)
        client.nodes_manager.nodes_cache[node.name] = node
    return node


_last_warning = [0.0]


def _warn_under_replicated(node: str, acknowledged: int, wanted: int) -> None:
    """Warn at most every ten seconds: a replica that is down makes every commit say so."""
    now = time.monotonic()
    if now - _last_warning[0] >= 10.0:
        _last_warning[0] = now
        logger.warning("a commit on %s reached %d of %d replicas within the WAIT timeout",
                       node, acknowledged, wanted)  # fmt: skip
