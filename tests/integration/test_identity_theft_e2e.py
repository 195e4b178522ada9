"""The two gravest thefts through the real broker and Redis: a backdated login and logout (R14).

Thirty days ago the victim logged in on device D at 10:00 and chatted there at 11:00 and 12:00,
each record written as it happened. Today the attacker, who knows D's anonymous_id, sends a
login of their own (a valid user_hash) stamped 10:02 that day, and a logout without any
credential stamped 10:01. Both are refused `too_late`; nothing the victim owns moves.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from pipeline.ops.admin import ensure_topics, remove_run
from pipeline.ops.topics import topic_specs
from tests.integration.conftest import KEEP, SECRETS
from tests.support import events as ev
from tests.support.kafka import Pipeline

WS = "ws-a"
SECRET = SECRETS[WS]
DAY = datetime.now(UTC).replace(hour=10, minute=0, second=0, microsecond=0) - timedelta(days=30)


def at(minutes: int) -> str:
    return (DAY + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


async def test_backdated_login_and_logout_are_too_late(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    await pipeline.send("telemetry.login", ev.login(WS, "D", at(0), "vic", SECRET))
    await pipeline.send("telemetry.chat_start", ev.chat_start(WS, "D", at(60), "conv-1"))
    await pipeline.send("telemetry.chat_start", ev.chat_start(WS, "D", at(120), "conv-2",
                                                              email="vic@example.com"))  # fmt: skip

    def victim(out) -> dict | None:
        return next((p for p in out.latest_profiles().values() if p["user_id"] == "vic"), None)

    await pipeline.wait_for(lambda out: (victim(out) or {}).get("conversation_ids") == ["conv-1", "conv-2"],
                            what="the victim's two conversations")  # fmt: skip
    before = pipeline.outputs.latest_profiles()
    now_ms = int(time.time() * 1000)
    login = ev.login(WS, "D", at(2), "mal", SECRET)
    logout = ev.logout(WS, "D", at(1), "vic")
    await pipeline.send("telemetry.login", login, timestamp_ms=now_ms)
    await pipeline.send("telemetry.logout", logout, timestamp_ms=now_ms)
    await pipeline.wait_for(
        lambda out: len(out.of("identity.rejected")) == 2, what="two rejections"
    )
    reasons = {
        r["input_event_id"]: r["reason"] for r in pipeline.outputs.values("identity.rejected")
    }
    assert reasons == {login["event_id"]: "too_late", logout["event_id"]: "too_late"}
    # The worker has gone past them: a later event of another device is processed.
    await pipeline.send("telemetry.page_view", ev.page_view(WS, "E", at(0)), key="D",
                        timestamp_ms=now_ms)  # fmt: skip
    await pipeline.wait_for(lambda out: any(r.value and r.value["reason"] == "too_late"
                                            and r.value["input_event_id"] not in reasons
                                            for r in out.of("identity.rejected")),
                            what="the page view (a day late too)")  # fmt: skip
    assert pipeline.outputs.latest_profiles() == before
    assert pipeline.outputs.of("identity.shutdown") == []
    assert not [m for m in pipeline.outputs.values("identity.merged") if m["user_id"] == "mal"]
    (rejected,) = [r for r in pipeline.outputs.values("identity.rejected")
                   if r["input_event_id"] == login["event_id"]]  # fmt: skip
    assert login["user_hash"] not in rejected["original"]  # the valid proof is not echoed


async def test_log_append_time_topics_ignore_a_forged_record_timestamp(
    servers: tuple[str, str], secrets_file, tmp_path
) -> None:
    # A producer that may write to the input topics can stamp its records as it likes
    # (CreateTime). On topics created with IDP_INPUT_TIMESTAMP_TYPE=LogAppendTime the broker
    # stamps them on arrival, so a login backdated together with its record is still late.
    bootstrap, redis_url = servers
    run = uuid.uuid4().hex[:10]
    prefix = f"t{run}."
    await ensure_topics(
        bootstrap, topic_specs(prefix, 4, timestamp_type="LogAppendTime", retention_ms=KEEP)
    )
    pipe = Pipeline(bootstrap=bootstrap, redis_url=redis_url, prefix=prefix, app_id=f"idp-{run}",
                    namespace=f"t{run}", secrets_file=secrets_file, log_dir=tmp_path)  # fmt: skip
    await pipe.start()
    try:
        pipe.start_worker()
        login = ev.login(WS, "D", at(2), "mal", SECRET)
        await pipe.send("telemetry.login", login)  # its record claims the event's own time
        await pipe.wait_for(lambda out: out.of("identity.rejected"), what="the rejection")
        (rejected,) = pipe.outputs.values("identity.rejected")
        assert (rejected["input_event_id"], rejected["reason"]) == (login["event_id"], "too_late")
    finally:
        await pipe.close()
        await remove_run(bootstrap, redis_url, prefix, f"t{run}")
