from pathlib import Path

import orjson
import pytest

from pipeline.ops.settings import SecretsFileError, Settings
from pipeline.worker.app import core_config


def test_environment_names_of_the_spec(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secrets = tmp_path / "s.json"
    secrets.write_bytes(orjson.dumps({"acme": "a" * 32, "globex": ["new" * 11, "old" * 11]}))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("REDIS_URL", "redis://r:2/3")
    monkeypatch.setenv("IDP_SECRETS_FILE", str(secrets))
    monkeypatch.setenv("IDP_TOPIC_PREFIX", "staging.")
    monkeypatch.setenv("IDP_BLOCKED_VALUES", "Test-User, demo")
    monkeypatch.setenv("IDP_SHARED_DEVICE_LIMIT", "3")
    settings = Settings()
    assert (settings.kafka_bootstrap_servers, settings.redis_url) == ("k:1", "redis://r:2/3")
    assert settings.topic("identity.profiles") == "staging.identity.profiles"
    config = core_config(settings)
    assert config.secrets["globex"] == (b"new" * 11, b"old" * 11)  # both accepted during rotation
    assert {"test-user", "demo", "undefined"} <= config.blocked_values
    assert config.shared_device_limit == 3


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "IDP_TOPIC_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.kafka_bootstrap_servers == "localhost:9092"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.topic_prefix == ""


@pytest.mark.parametrize(
    "content", [b"not json", b"[]", b'{"ws": ""}', b'{"ws": 5}', b'{"ws": []}']
)
def test_a_malformed_secrets_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(SecretsFileError, match=str(path)):
        _ = Settings(secrets_file=path).workspace_secrets


def test_a_worker_reads_every_input_unless_told_which(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDP_INPUTS", raising=False)
    assert Settings().input_topics() == (
        "telemetry.page_view", "telemetry.chat_start", "telemetry.signup", "telemetry.login",
        "telemetry.logout", "privacy.erase",
    )  # fmt: skip
    monkeypatch.setenv("IDP_INPUTS", " privacy.erase ,telemetry.login")
    assert Settings().input_topics() == ("telemetry.login", "privacy.erase")
    monkeypatch.setenv("IDP_INPUTS", "privacy.erase,identity.profiles")
    with pytest.raises(ValueError, match="not input topics: identity.profiles"):
        Settings()
