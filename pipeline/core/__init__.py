"""The identity rules as pure, deterministic functions: no Kafka, Redis, clock or logging."""
