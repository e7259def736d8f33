# syntax=docker/dockerfile:1
# The NTM gRPC server: onnxruntime-gpu 1.31 on the CUDA 13 + cuDNN 9 runtime it needs. No torch.
#   docker build -t ntm-serve .
#   docker compose up            (GPU; see docker-compose.yml and docs/service.md)
#   docker compose up ntm-cpu    (hosts without a GPU)
# Every server setting is an NTM_* environment variable (README, "Service"). Sessions are snapshotted to
# /state (NTM_STATE_DIR; mount a volume there to keep them across containers).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# The serving dependencies first (a cached layer): the base install and the [server] extra, which have no torch.
COPY pyproject.toml ./
RUN python -c "import tomllib; t = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(t['project']['dependencies'] + t['project']['optional-dependencies']['server']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY ntm_serve ./ntm_serve
RUN pip install --no-deps . \
    && python -c "import ntm_serve.server.server, sys; assert 'torch' not in sys.modules" \
    && useradd --system --uid 10001 --no-create-home ntm \
    && install -d -o ntm -m 0700 /state

ENV NTM_MODELS=/models \
    NTM_HOST=0.0.0.0 \
    NTM_PORT=50051 \
    NTM_METRICS_HOST=0.0.0.0 \
    NTM_METRICS_PORT=9090 \
    NTM_PROVIDER=auto \
    NTM_STATE_DIR=/state
EXPOSE 50051 9090
USER ntm
WORKDIR /
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["python", "-m", "ntm_serve.server.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "ntm_serve.server"]
