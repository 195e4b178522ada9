"""The worker's HTTP endpoints (`IDP_HTTP_PORT`): health, readiness, metrics, profile lookup.

`/healthz` answers while the process runs; `/readyz` only once the worker has joined its group
and reaches Kafka and Redis; `/metrics` is the Prometheus text of the process's registry;
`/v1/workspaces/{workspace_id}/profile` answers the live profile an identifier names, read
from Redis through the worker's store (`ProfileLookup`). aiohttp serves them directly, as a
`mode.Service` started with the app (docs/design.md, *HTTP*).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from aiokafka.client import AIOKafkaClient
from pydantic import SecretStr

from pipeline.core import ids
from pipeline.core.facts import Device, EmailEntry, TokenUses, User
from pipeline.core.identifiers import MAX_IDENTIFIER_LENGTH
from pipeline.core.model import View
from pipeline.core.rules import TIMELINE_ROUNDS, CoreConfig, Timelines
from pipeline.state.base import KeyKind, Keys, Store
from pipeline.worker import metrics

logger = logging.getLogger(__name__)

# R1: the identifier that decides when a request names several, highest priority first.
IDENTIFIERS = ("contact_id", "user_id", "email", "anonymous_id")
MAX_MERGE_HOPS = 8  # `merged_into` is followed at most this far (a chain is one hop in practice)
PROBE_TIMEOUT_S = 2.0

_TABLES: dict[str, tuple[KeyKind, Callable[[bytes], object]]] = {
    "devices": ("dev", Device.from_bytes),
    "users": ("user", User.from_bytes),
    "emails": ("email", EmailEntry.from_bytes),
    "tokens": ("jti", TokenUses.from_bytes),
}


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status and JSON body (bytes, sent as they are)."""

    status: int
    body: bytes


def _error(status: int, error: str, **extra: object) -> Answer:
    return Answer(status, orjson.dumps({"error": error, **extra}))


@dataclass
class _Loaded:
    """The records of one workspace loaded so far for a device's timeline (None: absent)."""

    workspace_id: str
    tables: dict[str, dict[str, object]] = field(
        default_factory=lambda: {table: {} for table in _TABLES}
    )

    def view(self) -> View:
        return View(self.workspace_id, **self.tables)  # type: ignore[arg-type]


class ProfileLookup:
    """The live profile an identifier names (SPEC §4), from the records the worker keeps.

    `<ns>:{ws}:contact:<id>` holds each profile as last published, as its wire JSON, so an
    answer is byte for byte what `identity.profiles` last carried for that contact.
    """

    def __init__(self, store: Store, keys: Keys, config: CoreConfig) -> None:
        self.store = store
        self.keys = keys
        self.config = config

    async def find(self, workspace_id: str, query: dict[str, str]) -> Answer:
        """Answer a lookup: the profile (200), 400, 404, or 409 for an e-mail of several users.

        Of several identifiers the highest in R1's priority decides; the others are ignored.
        """
        given = {name: query[name].strip() for name in IDENTIFIERS if name in query}
        if not given:
            return _error(400, "give one of " + ", ".join(IDENTIFIERS))
        name, value = next(iter(given.items()))
        if not value or len(value) > MAX_IDENTIFIER_LENGTH:  # never an identifier (R3)
            return _error(400, f"{name} must be 1 to {MAX_IDENTIFIER_LENGTH} characters")
        if name == "contact_id":
            return await self._profile(workspace_id, value)
        if name == "user_id":
            return await self._profile(workspace_id, ids.user_contact_id(workspace_id, value))
        if name == "email":
            return await self._by_email(workspace_id, value.lower())
        return await self._by_device(workspace_id, value)

    async def _read(self, workspace_id: str, kind: KeyKind, ident: str) -> bytes | None:
        (record,) = await self.store.read([self.keys.of(workspace_id, kind, ident)])
        return record.data or None  # b"": a tombstoned contact

    async def _profile(self, workspace_id: str, contact_id: str) -> Answer:
        """The contact's profile, following `merged_into` (at most `MAX_MERGE_HOPS`)."""
        seen: list[str] = []
        while len(seen) <= MAX_MERGE_HOPS:
            data = await self._read(workspace_id, "contact", contact_id)
            if data is None:
                return _error(404, "no such profile", contact_id=contact_id)
            into = orjson.loads(data).get("merged_into")
            if not into or into in seen or into == contact_id:
                return Answer(200, data)
            seen.append(contact_id)
            contact_id = into
        return _error(404, "merged_into chain too long", contact_ids=seen)

    async def _by_email(self, workspace_id: str, email: str) -> Answer:
        """The one user who verified the e-mail (or, if none did, the one who claimed it)."""
        data = await self._read(workspace_id, "email", email)
        entry = EmailEntry.from_bytes(data) if data else EmailEntry()
        users = sorted(entry.verified) or sorted(entry.unverified)
        if not users:
            return _error(404, "no user holds this e-mail")
        if len(users) > 1:
            contact_ids = [ids.user_contact_id(workspace_id, u) for u in users]
            return _error(409, "several users hold this e-mail", contact_ids=contact_ids)
        return await self._profile(workspace_id, ids.user_contact_id(workspace_id, users[0]))

    async def _by_device(self, workspace_id: str, anonymous_id: str) -> Answer:
        """The contact of the device's current session: the last segment of its timeline."""
        loaded = _Loaded(workspace_id)
        await self._load(loaded, {"devices": {anonymous_id}})
        if loaded.tables["devices"].get(anonymous_id) is None:
            return _error(404, "no such device")
        for _ in range(TIMELINE_ROUNDS):
            timelines = Timelines(loaded.view(), self.config)
            timeline = timelines.of(anonymous_id)
            need = timelines.missing()
            wanted = {t: set(getattr(need, t)) for t in _TABLES if getattr(need, t)}
            if not wanted:
                current = timeline.segments[-1]
                contact_id = current.merge.into_contact_id if current.merge else current.contact_id
                return await self._profile(workspace_id, contact_id)
            await self._load(loaded, wanted)
        return _error(503, "the device's history needs more reads than a lookup makes")

    async def _load(self, loaded: _Loaded, wanted: dict[str, set[str]]) -> None:
        pairs = [(table, key) for table, keys in sorted(wanted.items()) for key in sorted(keys)
                 if key not in loaded.tables[table]]  # fmt: skip
        if not pairs:
            return
        keys = [self.keys.of(loaded.workspace_id, _TABLES[t][0], k) for t, k in pairs]
        for (table, key), record in zip(pairs, await self.store.read(keys), strict=True):
            decode = _TABLES[table][1]
            loaded.tables[table][key] = decode(record.data) if record.data else None


@dataclass
class Readiness:
    """What `/readyz` asks: each check answers None when fine, else the reason it is not."""

    checks: Sequence[Callable[[], Awaitable[str | None]]]

    async def reasons(self) -> list[str]:
        """The reasons the worker is not ready ([] when it is), checked concurrently."""

        async def bounded(check: Callable[[], Awaitable[str | None]]) -> str | None:
            try:
                return await asyncio.wait_for(check(), PROBE_TIMEOUT_S)
            except TimeoutError:
                return f"{getattr(check, '__name__', 'check')}: no answer in {PROBE_TIMEOUT_S} s"
            except Exception as exc:  # any failure is a reason, never a 500
                return f"{getattr(check, '__name__', 'check')}: {type(exc).__name__}: {exc}"

        found = await asyncio.gather(*(bounded(check) for check in self.checks))
        return [reason for reason in found if reason]


class KafkaProbe:
    """Whether a Kafka broker answers a metadata request, on a client of its own."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._client: AIOKafkaClient | None = None

    async def __call__(self) -> str | None:
        """None when a broker answers, else the reason."""
        if self._client is None:
            client = AIOKafkaClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            try:
                await client.bootstrap()
            except Exception:
                await client.close()
                raise
            self._client = client
        metadata = await self._client.fetch_all_metadata()
        if not metadata.brokers():
            return f"kafka: no broker answers at {self.bootstrap}"
        return None

    async def close(self) -> None:
        """Close the client, if one was opened."""
        if self._client is not None:
            await self._client.close()
            self._client = None


def bearer_ok(header: str | None, token: SecretStr) -> bool:
    """Whether an Authorization header carries the token (compared in constant time)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())


def _json(answer: Answer, **headers: str) -> web.Response:
    return web.Response(status=answer.status, body=answer.body,
                        content_type="application/json", headers=headers or None)  # fmt: skip


def build_web_app(*, lookup: ProfileLookup, readiness: Readiness,
                  api_token: SecretStr | None) -> web.Application:  # fmt: skip
    """The aiohttp application of the endpoints (served by `HttpServer`, tested directly)."""

    async def healthz(_: web.Request) -> web.Response:
        return _json(Answer(200, b'{"status":"ok"}'))

    async def readyz(_: web.Request) -> web.Response:
        reasons = await readiness.reasons()
        if reasons:
            return _json(Answer(503, orjson.dumps({"ready": False, "reasons": reasons})))
        return _json(Answer(200, b'{"ready":true}'))

    async def prometheus(_: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def profile(request: web.Request) -> web.Response:
        if api_token is None or not api_token.get_secret_value():
            return _json(_error(403, "no IDP_API_TOKEN is configured: /v1 is closed"))
        if not bearer_ok(request.headers.get("Authorization"), api_token):
            return _json(_error(401, "a valid bearer token is required"),
                         **{"WWW-Authenticate": 'Bearer realm="idp"'})  # fmt: skip
        workspace_id = request.match_info["workspace_id"]
        query = {name: request.query[name] for name in IDENTIFIERS if name in request.query}
        return _json(await lookup.find(workspace_id, query))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/v1/workspaces/{workspace_id}/profile", profile)
    return app


class HttpServer:
    """Serves the endpoints on host:port until stopped (started and stopped with the app)."""

    def __init__(self, app: web.Application, *, host: str, port: int,
                 on_close: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:  # fmt: skip
        self.app = app
        self.host = host
        self.port = port
        self.on_close = on_close
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        self._runner = runner
        logger.info("HTTP endpoints on http://%s:%d (/healthz /readyz /metrics /v1)",
                    self.host, self.port)  # fmt: skip

    async def stop(self) -> None:
        """Stop serving and close what the endpoints opened."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for close in self.on_close:
            await close()
