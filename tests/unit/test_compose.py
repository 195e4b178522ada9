from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_kafka_redis_and_the_worker_with_spec_variables() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker"} <= services.keys()
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["kafka"]["image"].endswith(":3.9.2")
    worker_env = services["worker"]["environment"]
    assert {
        "KAFKA_BOOTSTRAP_SERVERS",
        "REDIS_URL",
        "IDP_SECRETS_FILE",
        "IDP_TOPIC_PREFIX",
    } <= worker_env.keys()
    assert services["worker"]["build"] == "."
    assert "appendonly" in " ".join(services["redis"]["command"])


def test_the_dockerfile_runs_the_idp_worker() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["idp"]' in text and 'CMD ["worker"]' in text
