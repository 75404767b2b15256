# The gateway. Runs as a non-root user; talks to TF Serving over gRPC (MEMEFLY_BACKEND=tfserving).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
COPY pyproject.toml README.md ./
COPY memefly ./memefly
COPY gateway ./gateway
COPY export ./export
COPY serving ./serving
COPY infra ./infra
RUN pip install --no-cache-dir ".[aws]" && useradd --create-home --uid 10001 memefly
USER memefly
EXPOSE 8000
CMD ["memefly", "serve", "--host", "0.0.0.0", "--port", "8000", "--backend", "tfserving"]
