"""The pure parts of running on clusters: replication of topics, key slots, the stack's configs."""

from __future__ import annotations

from pathlib import Path

from redis.crc import key_slot

from pipeline.ops import stack
from pipeline.ops.topics import (
    default_replication_factor,
    min_insync_replicas,
    replicated,
    topic_specs,
)
from pipeline.state.base import Keys
from pipeline.state.redis_store import _by_slot, _slot_tag


def test_the_replication_factor_follows_the_number_of_brokers() -> None:
    # SPEC §4: 1, or 3 when the cluster has at least three brokers.
    assert [default_replication_factor(n) for n in (1, 2, 3, 5)] == [1, 1, 3, 3]


def test_three_replicas_need_two_in_sync_for_a_write() -> None:
    assert min_insync_replicas(1) is None and min_insync_replicas(2) is None
    assert min_insync_replicas(3) == 2
    specs = topic_specs("p.", 4)
    assert replicated(specs, 1) == specs
    three = replicated(specs, 3)
    assert {spec.config["min.insync.replicas"] for spec in three} == {"2"}
    # Nothing else of a topic's configuration changes (compaction of the profiles stays).
    assert [{k: v for k, v in s.config.items() if k != "min.insync.replicas"} for s in three] == [
        s.config for s in specs
    ]


def test_every_key_of_a_workspace_has_one_slot() -> None:
    keys = Keys("idp")
    for ws in ("acme", "a{b}c", "}{", "x:y"):
        names = [keys.of(ws, kind, "id{1}") for kind in ("dev", "user", "email", "contact")]
        names.append(keys.outbox(ws, "0f"))
        assert {key_slot(name.encode()) for name in names} == {key_slot(names[0].encode())}
        assert {_slot_tag(name) for name in names} == {_slot_tag(names[0])}


def test_keys_are_grouped_by_workspace_for_multi_key_commands() -> None:
    keys = Keys("idp")
    names = [keys.of("a", "dev", "1"), keys.of("b", "dev", "1"), keys.outbox("a", "x")]
    assert _by_slot(names) == {"a": [names[0], names[2]], "b": [names[1]]}


def test_the_kafka_quorum_lists_every_node_as_a_voter(tmp_path: Path) -> None:
    text = stack._cluster_kafka_properties(1, 3, tmp_path)
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert lines["node.id"] == "2"
    assert lines["controller.quorum.voters"] == (
        "1@127.0.0.1:29192,2@127.0.0.1:29193,3@127.0.0.1:29194"
    )
    assert lines["listeners"] == "PLAINTEXT://127.0.0.1:29093,CONTROLLER://127.0.0.1:29193"
    assert lines["min.insync.replicas"] == "2" and lines["default.replication.factor"] == "3"
    assert lines["offsets.topic.replication.factor"] == "3"


def test_the_redis_nodes_run_in_cluster_mode_with_persistence(tmp_path: Path) -> None:
    conf = stack._cluster_redis_conf(7003, tmp_path)
    assert "cluster-enabled yes" in conf and "port 7003" in conf
    assert (
        "appendonly yes" in conf and f"cluster-node-timeout {stack.CLUSTER_NODE_TIMEOUT_MS}" in conf
    )


def test_the_cluster_ports_do_not_meet_the_single_node_stack() -> None:
    assert stack.cluster_bootstrap(3) == "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
    assert stack.cluster_redis_url() == "redis://127.0.0.1:7000/0"
