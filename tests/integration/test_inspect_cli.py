"""`idp inspect` against the state the worker left in the real Redis."""

import asyncio
import subprocess
import sys

from pipeline.core import ids
from tests.integration.conftest import SECRETS, TOKEN_EXP
from tests.support import events as ev
from tests.support.kafka import PROJECT_ROOT, Pipeline

WS = "ws-a"


async def test_inspect_finds_a_user_by_every_identifier(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    token = ev.jwt_hs256(
        SECRETS[WS], {"user_id": "ines", "email": "ines@example.com", "exp": TOKEN_EXP}
    )
    chat = ev.chat_start(
        WS, "ines-phone", "2026-11-24T09:00:00Z", "ines-conv", email="ines@example.com"
    )
    login = ev.login(
        WS, "ines-laptop", "2026-11-24T09:05:00Z", "ines", SECRETS[WS], identity_token=token
    )
    await pipeline.send("telemetry.chat_start", chat)
    await pipeline.send("telemetry.login", login)
    contact = ids.user_contact_id(WS, "ines")
    await pipeline.wait_for(
        lambda out: out.latest_profiles().get(contact, {}).get("conversation_ids") == ["ines-conv"],
        what="ines's profile with the chat",
    )

    def run(identifier: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "inspect", WS, identifier],
                              cwd=PROJECT_ROOT, env=pipeline.env, capture_output=True, text=True, timeout=60)  # fmt: skip

    for identifier in ("ines", "ines@example.com", "ines-laptop", contact):
        result = await asyncio.to_thread(run, identifier)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"contact {contact} (user)"), (identifier, result.stdout)
    text = result.stdout
    lead = ids.visitor_contact_id(WS, "ines-phone", "origin")
    assert "email: ines@example.com (verified)" in text
    assert (
        f"absorbed {lead} from device ines-phone (email_match, event {login['event_id']})" in text
    )
    missing = await asyncio.to_thread(run, "nobody")
    assert missing.returncode == 1 and "no contact" in missing.stderr
