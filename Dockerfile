# The worker image used by docker-compose.yml and deploy/k8s.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY pipeline ./pipeline
COPY schemas ./schemas
RUN pip install --no-cache-dir -c constraints.txt .
# Numeric, so that Kubernetes' runAsNonRoot can check it (65534 is nobody).
USER 65534:65534
ENV PYTHONUNBUFFERED=1
# IDP_HTTP_PORT in deploy/k8s and docker-compose.yml: /healthz, /readyz, /metrics, /v1.
EXPOSE 8080
ENTRYPOINT ["idp"]
CMD ["worker"]
