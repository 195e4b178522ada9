"""Every setting of the pipeline in one frozen object, read from the environment (SPEC §4)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import orjson
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.topics import INPUT_TOPICS


class SecretsFileError(ValueError):
    """The workspace secrets file is missing or malformed."""


class Settings(BaseSettings):
    """Configuration; the environment names of SPEC §4 are binding, the `IDP_*` extras are ours."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        "localhost:9092", validation_alias="KAFKA_BOOTSTRAP_SERVERS"
    )
    redis_url: str = Field("redis://localhost:6379/0", validation_alias="REDIS_URL")
    secrets_file: Path | None = Field(None, validation_alias="IDP_SECRETS_FILE")
    topic_prefix: str = Field("", validation_alias="IDP_TOPIC_PREFIX")
    # Output topics under another prefix than the inputs (`idp replay` writes beside the live
    # outputs); None means the same prefix as the inputs.
    output_topic_prefix: str | None = Field(None, validation_alias="IDP_OUTPUT_TOPIC_PREFIX")
    # Everything below is internal to the process and may change between releases.
    # The consumer group and the Redis namespace follow the topic prefix unless set: two
    # environments sharing a cluster then never rebalance each other's workers nor read each
    # other's state (`prefixed_default`).
    app_id: str = Field("", validation_alias="IDP_APP_ID")
    state_namespace: str = Field("", validation_alias="IDP_STATE_NAMESPACE")
    partitions: int = Field(4, ge=1, validation_alias="IDP_PARTITIONS")
    batch_size: int = Field(500, ge=1, validation_alias="IDP_BATCH_SIZE")
    # How long a take waits for its batch to fill (see `pipeline.worker.fetching` for why 10 ms).
    batch_within_s: float = Field(0.01, gt=0, validation_alias="IDP_BATCH_WITHIN_S")
    # How long a worker that is behind may gather takes into one batch (0: never gathers).
    batch_gather_s: float = Field(0.05, ge=0, le=1, validation_alias="IDP_BATCH_GATHER_S")
    session_timeout_s: float = Field(60.0, ge=6, validation_alias="IDP_SESSION_TIMEOUT_S")
    commit_interval_s: float = Field(2.8, gt=0, validation_alias="IDP_COMMIT_INTERVAL_S")
    # Devices whose first activity a worker remembers, to decide their page views without Redis.
    known_devices: int = Field(100_000, ge=0, validation_alias="IDP_KNOWN_DEVICES")
    # The asyncio event loop of the worker: uvloop (libuv, in C) or the standard library's.
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", validation_alias="IDP_EVENT_LOOP")
    # How long a caught-up worker lets the broker gather records for one fetch (0: at once).
    fetch_gather_ms: int = Field(20, ge=0, le=500, validation_alias="IDP_FETCH_GATHER_MS")
    # R14: how far before its Kafka record's timestamp an event may be stamped.
    allowed_lateness_s: int = Field(86_400, ge=0, validation_alias="IDP_ALLOWED_LATENESS_S")
    session_lateness_s: int = Field(300, ge=0, validation_alias="IDP_SESSION_LATENESS_S")
    # R15: the entries each list of a profile keeps, the most recent by event time.
    profile_list_limit: int = Field(1000, ge=1, validation_alias="IDP_PROFILE_LIST_LIMIT")
    # The timestamp type the project creates its input topics with (see the README, Security).
    input_timestamp_type: Literal["CreateTime", "LogAppendTime"] = Field(
        "CreateTime", validation_alias="IDP_INPUT_TIMESTAMP_TYPE"
    )
    dedup_ttl_days: int = Field(30, ge=1, validation_alias="IDP_DEDUP_TTL_DAYS")
    log_level: str = Field("info", validation_alias="IDP_LOG_LEVEL")
    # The worker's log lines: text, or one JSON object per line (time, level, logger, message).
    log_format: Literal["text", "json"] = Field("text", validation_alias="IDP_LOG_FORMAT")
    shared_device_limit: int = Field(10, ge=1, validation_alias="IDP_SHARED_DEVICE_LIMIT")
    shared_window_s: int = Field(86400, ge=1, validation_alias="IDP_SHARED_WINDOW_S")
    # Fault injection for the fault tests only: exit right after the N-th commit that has
    # outputs, before sending them (0: never).
    fault_exit_after_commits: int = Field(0, ge=0, validation_alias="IDP_FAULT_EXIT_AFTER_COMMITS")
    metrics_port: int = Field(0, ge=0, lt=65536, validation_alias="IDP_METRICS_PORT")
    # The input topics this worker reads (logical names, comma-separated; empty: all). `idp
    # replay` reads `privacy.erase` alone first, so that every erasure precedes the events.
    inputs: str = Field("", validation_alias="IDP_INPUTS")
    # SPEC §4: create the missing topics at start (else wait for them); the HTTP endpoints
    # (port 0: none); the bearer token of /v1 (unset: /v1 answers 403).
    create_topics: bool = Field(True, validation_alias="IDP_CREATE_TOPICS")
    http_port: int = Field(0, ge=0, lt=65536, validation_alias="IDP_HTTP_PORT")
    http_host: str = Field("127.0.0.1", validation_alias="IDP_HTTP_HOST")
    api_token: SecretStr | None = Field(None, validation_alias="IDP_API_TOKEN")
    # Extra generic values to refuse as identifiers (R3), comma-separated, case-insensitive.
    blocked_values: str = Field("", validation_alias="IDP_BLOCKED_VALUES")
    # Replication factor of the topics the project creates; None: 1, or 3 when the cluster has
    # at least three brokers (SPEC §4). With 3 or more, `min.insync.replicas` is 2.
    replication_factor: int | None = Field(None, ge=1, validation_alias="IDP_REPLICATION_FACTOR")
    # SPEC §3: every state change also goes to the compacted state changelog (off: Redis is
    # the only copy, for measuring its cost); a worker whose Redis is behind the changelog
    # applies its tail first (off: refuses to process until `idp restore`).
    changelog: bool = Field(True, validation_alias="IDP_CHANGELOG")
    auto_restore: bool = Field(True, validation_alias="IDP_AUTO_RESTORE")
    # On a Redis Cluster, how many replicas a commit waits for (WAIT; 0: none; docs/clusters.md).
    redis_wait_replicas: int = Field(1, ge=0, validation_alias="IDP_REDIS_WAIT_REPLICAS")

    @model_validator(mode="after")
    def _prefixed_defaults(self) -> Settings:
        # Frozen: the derived defaults are set once, as if they had been given.
        prefix = self.topic_prefix
        if not self.app_id:
            object.__setattr__(self, "app_id", prefixed_default("identity-pipeline", prefix))
        if not self.state_namespace:
            object.__setattr__(self, "state_namespace", prefixed_default("idp", prefix))
        return self

    @field_validator("inputs")
    @classmethod
    def _known_inputs(cls, value: str) -> str:
        unknown = {n.strip() for n in value.split(",") if n.strip()} - set(INPUT_TOPICS)
        if unknown:
            raise ValueError(f"not input topics: {', '.join(sorted(unknown))} "
                             f"(they are {', '.join(INPUT_TOPICS)})")  # fmt: skip
        return value

    def input_topics(self) -> tuple[str, ...]:
        """The logical input topics this worker reads (`IDP_INPUTS`), in SPEC §3's order."""
        chosen = {name.strip() for name in self.inputs.split(",") if name.strip()}
        return tuple(name for name in INPUT_TOPICS if not chosen or name in chosen)

    def topic(self, logical: str) -> str:
        """The physical name of a topic of SPEC §3 under the configured prefix."""
        return f"{self.topic_prefix}{logical}"

    def output_topic(self, logical: str) -> str:
        """The physical name of an output topic (under the output prefix, when one is set)."""
        prefix = self.topic_prefix if self.output_topic_prefix is None else self.output_topic_prefix
        return f"{prefix}{logical}"

    @cached_property
    def workspaces(self) -> dict[str, WorkspaceEntry]:
        """Workspace id -> its secrets and token policy, from `IDP_SECRETS_FILE` (R17)."""
        if self.secrets_file is None:
            return {}
        return load_workspaces(self.secrets_file)

    @property
    def workspace_secrets(self) -> dict[str, tuple[SecretStr, ...]]:
        """Workspace id -> accepted secrets (a list during rotation), from `IDP_SECRETS_FILE`."""
        return {ws: entry.secrets for ws, entry in self.workspaces.items()}


def prefixed_default(base: str, prefix: str) -> str:
    """`base` for an empty prefix, else `base` and the prefix, e.g. `idp-staging.` for `staging.`.

    The namespace becomes part of every Redis key (`state.base.Keys`), which escapes it.
    """
    return f"{base}-{prefix}" if prefix else base


MIN_SECRET_BYTES = 32  # HS256 keys shorter than the hash are refused (R17, RFC 7518 §3.2)
_POLICY_FIELDS = {"secrets", "require_token", "max_token_lifetime_s"}


@dataclass(frozen=True, slots=True)
class WorkspaceEntry:
    """One workspace of the secrets file: its secrets and its identity-token policy (R17)."""

    secrets: tuple[SecretStr, ...]
    require_token: bool = False
    max_token_lifetime_s: int | None = None


def load_workspaces(path: Path) -> dict[str, WorkspaceEntry]:
    """Read the secrets file: workspace_id -> a secret, a list of secrets, or a policy object.

    The object form is `{"secrets": [...], "require_token": bool, "max_token_lifetime_s": int}`
    (R17). Every problem is a `SecretsFileError` naming the file and the workspace.
    """
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        message = f"cannot read the workspace secrets file {path}: {exc}"
        raise SecretsFileError(message) from exc
    if not isinstance(raw, dict):
        message = f"{path} must hold a JSON object mapping workspace_id to its secret"
        raise SecretsFileError(message)
    entries: dict[str, WorkspaceEntry] = {}
    for workspace_id, value in raw.items():
        where = f"{path}: workspace {workspace_id!r}"
        policy: dict = {}
        if isinstance(value, dict):
            unknown = set(value) - _POLICY_FIELDS
            if unknown:
                known = ", ".join(sorted(_POLICY_FIELDS))
                message = f"{where}: unknown field(s) {sorted(unknown)}; known: {known}"
                raise SecretsFileError(message)
            policy, value = value, value.get("secrets")
            if not isinstance(policy.get("require_token", False), bool):
                raise SecretsFileError(f"{where}: require_token must be true or false")
            lifetime = policy.get("max_token_lifetime_s")
            if lifetime is not None and (
                not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0
            ):
                raise SecretsFileError(f"{where}: max_token_lifetime_s must be a positive integer")
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) and v for v in values):
            message = f"{where}: a secret must be a non-empty string (or a list of them)"
            raise SecretsFileError(message)
        for v in values:
            if len(v.encode()) < MIN_SECRET_BYTES:
                message = (
                    f"{where}: a secret of {len(v.encode())} bytes is too short; HS256 needs "
                    f"at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)"
                )
                raise SecretsFileError(message)
        entries[workspace_id] = WorkspaceEntry(
            tuple(SecretStr(v) for v in values),
            require_token=policy.get("require_token", False),
            max_token_lifetime_s=policy.get("max_token_lifetime_s"),
        )
    return entries


def load_secrets(path: Path) -> dict[str, tuple[SecretStr, ...]]:
    """Workspace id -> its accepted secrets, from the secrets file (`load_workspaces`)."""
    return {ws: entry.secrets for ws, entry in load_workspaces(path).items()}
