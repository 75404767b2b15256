# The gateway image, without TensorFlow. Runs as a non-root user; talks to TF Serving over gRPC
# (MEMEFLY_BACKEND=tfserving) or to a SageMaker endpoint (MEMEFLY_BACKEND=sagemaker).

# Stage 1: TF Serving's generated protos. Only tensorflow-serving-api ships them, and it requires tensorflow;
# `python -m gateway.protos` copies out just the *_pb2 modules the gateway imports (a few hundred KB).
FROM python:3.11-slim AS protos
WORKDIR /src
COPY pyproject.toml README.md ./
COPY memefly ./memefly
COPY gateway ./gateway
COPY cli ./cli
RUN pip install --no-cache-dir ".[tfserving-protos]" && python -m gateway.protos /protos

# Stage 2: the gateway with its base dependencies and boto3 (sagemaker backend, S3 meme store); the copied
# protos are found through PYTHONPATH.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fonts-dejavu-core && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/opt/memefly/protos
WORKDIR /app
COPY pyproject.toml README.md ./
COPY memefly ./memefly
COPY gateway ./gateway
COPY cli ./cli
RUN pip install --no-cache-dir ".[aws]" && useradd --create-home --uid 10001 memefly
COPY --from=protos /protos /opt/memefly/protos
USER memefly
EXPOSE 8000
CMD ["memefly", "serve", "--host", "0.0.0.0", "--port", "8000", "--backend", "tfserving"]
