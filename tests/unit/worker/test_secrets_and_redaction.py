"""The secrets file's forms and policy (R17), prefix-derived defaults, and redacted rejections."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from pipeline.core.verify import TokenPolicy
from pipeline.ops.settings import SecretsFileError, Settings
from pipeline.worker.app import core_config
from pipeline.worker.codec import Source, rejection
from schemas.outputs import ORIGINAL_MAX_CHARS

LONG = "s" * 32


def settings_with(tmp_path: Path, content: object) -> Settings:
    path = tmp_path / "secrets.json"
    path.write_bytes(orjson.dumps(content))
    return Settings(secrets_file=path)


def test_the_three_forms_of_a_workspace_entry(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, {
        "plain": LONG,
        "rotating": [LONG, "t" * 40],
        "enforced": {"secrets": [LONG], "require_token": True, "max_token_lifetime_s": 600},
    })  # fmt: skip
    config = core_config(settings)
    assert config.secrets == {"plain": (LONG.encode(),), "rotating": (LONG.encode(), b"t" * 40),
                              "enforced": (LONG.encode(),)}  # fmt: skip
    assert config.policies["enforced"] == TokenPolicy(require_token=True, max_token_lifetime_s=600)
    assert config.policies["plain"] == TokenPolicy()


@pytest.mark.parametrize(("entry", "message"), [
    ("s" * 31, "workspace .ws.*31 bytes is too short"),
    ([LONG, "x"], "workspace 'ws'.*1 bytes is too short"),
    ({"secrets": [LONG], "require_tokens": True}, "unknown field"),
    ({"secrets": [LONG], "require_token": "yes"}, "require_token must be true or false"),
    ({"secrets": [LONG], "max_token_lifetime_s": 0}, "positive integer"),
    ({"require_token": True}, "non-empty string"),
])  # fmt: skip
def test_a_bad_entry_is_a_configuration_error_naming_the_workspace(
    tmp_path: Path, entry: object, message: str
) -> None:
    with pytest.raises(SecretsFileError, match=message):
        _ = settings_with(tmp_path, {"ws": entry}).workspaces


def test_the_group_and_namespace_follow_the_prefix_unless_given() -> None:
    assert (Settings().app_id, Settings().state_namespace) == ("identity-pipeline", "idp")
    staging = Settings(IDP_TOPIC_PREFIX="staging.")
    assert (staging.app_id, staging.state_namespace) == (
        "identity-pipeline-staging.",
        "idp-staging.",
    )
    given = Settings(IDP_TOPIC_PREFIX="staging.", IDP_APP_ID="g", IDP_STATE_NAMESPACE="n")
    assert (given.app_id, given.state_namespace) == ("g", "n")


HASH = "9f" * 32
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjoidSJ9.c2lnbmF0dXJl"


def fingerprint(proof: str) -> str:  # worked out here, not taken from the code
    return "sha256:" + hashlib.sha256(proof.encode()).hexdigest()[:8]


def original_of(value: bytes, *, key: bytes | None = b"k", topic: str = "telemetry.login") -> str:
    emit = rejection(Source(topic, 0, 7, key, value, None, "p." + topic), "test", "detail")
    return emit.value.original


@pytest.mark.parametrize("value", [
    orjson.dumps({"user_id": "u", "user_hash": HASH, "identity_token": TOKEN}),
    b'{"user_hash" : "' + HASH.encode() + b'", "identity_token":"' + TOKEN.encode() + b'"',  # cut
    b'user_hash junk {"user_hash":"' + HASH.encode() + b'"} {"identity_token": "' + TOKEN.encode(),
])  # fmt: skip
def test_a_rejection_never_carries_a_proof(value: bytes) -> None:
    original = original_of(value)
    assert HASH not in original and TOKEN not in original
    assert fingerprint(HASH) in original and fingerprint(TOKEN) in original


def test_a_proof_spelt_with_json_escapes_is_redacted_too() -> None:
    value = b'{"user\\u005fhash": "' + HASH.encode() + b'", "n": 1}'
    original = original_of(value)
    assert HASH not in original and fingerprint(HASH) in original


def test_redaction_comes_before_truncation() -> None:
    value = (
        b'{"pad": "'
        + b"x" * (ORIGINAL_MAX_CHARS - 30)
        + b'", "user_hash": "'
        + HASH.encode()
        + b'"}'
    )
    original = original_of(value)
    assert len(original) == ORIGINAL_MAX_CHARS
    assert HASH[:8] not in original  # not even its first characters survive the cut


def test_a_rejection_names_the_physical_topic_and_keeps_a_null_key() -> None:
    emit = rejection(
        Source("telemetry.login", 2, 9, None, b"x", None, "p.telemetry.login"), "r", "d"
    )
    assert emit.key is None
    assert emit.value.source_topic == "p.telemetry.login"
    other = rejection(
        Source("telemetry.login", 2, 9, None, b"x", None, "q.telemetry.login"), "r", "d"
    )
    assert other.value.event_id != emit.value.event_id  # the same position under another prefix
    again = rejection(
        Source("telemetry.login", 2, 9, None, b"y", None, "p.telemetry.login"), "r", "d"
    )
    assert again.value.event_id == emit.value.event_id  # the same record: the same rejection
