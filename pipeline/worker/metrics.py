"""The worker's counters, exported for Prometheus (`IDP_METRICS_PORT`).

Every input ends in exactly one of applied, unchanged or rejected, so at any quiet moment
`events_in = applied + unchanged + rejected` (the accounting identity the soak test checks).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS_IN = Counter("idp_events_in", "Input records read", ["topic"])
APPLIED = Counter("idp_events_applied", "Valid events that changed the identity state")
UNCHANGED = Counter("idp_events_unchanged", "Valid events that changed nothing (known, or replays)")
REJECTED = Counter("idp_events_rejected", "Inputs recorded on identity.rejected", ["reason"])
OUTPUTS = Counter("idp_outputs", "Records published", ["topic"])
BATCH_EVENTS = Histogram("idp_batch_events", "Input records per processed batch",
                         buckets=(1, 10, 50, 100, 200, 300, 400, 500, 1000))  # fmt: skip
UNREADABLE_RECORDS = Counter("idp_unreadable_state_records",
                             "Stored or outbox records that could not be decoded", ["kind"])
CONFLICTS = Counter("idp_commit_conflicts", "Workspace commits that lost a race and were redone")
# An input batch the worker cannot read holds its partition at that offset (`worker.fetching`).
UNREADABLE_BATCHES = Counter("idp_unreadable_batches",
                             "Input record batches found unreadable (each batch counted once)",
                             ["topic", "partition"])  # fmt: skip
HELD_AT = Gauge("idp_partition_held_at_offset",
                "Offset of the unreadable batch an input partition is held at (absent: not held)",
                ["topic", "partition"])  # fmt: skip


def serve(port: int) -> None:
    """Expose /metrics on 127.0.0.1:`port` (0 means: do not)."""
    if port:
        start_http_server(port, addr="127.0.0.1")
