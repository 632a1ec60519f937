# syntax=docker/dockerfile:1
#
# Two images from one file:
#   docker build --target gateway -t sdserve-gateway .   slim Python, FastAPI, no torch (also runs `sdserve webhooks`)
#   docker build --target worker  -t sdserve-worker  .   CUDA runtime, torch, diffusers, xformers (optional at run time)
#
# Build stages install into a virtual environment under /opt/venv; the final stages copy only that
# environment onto a clean base: no compiler, no pip cache, no build tools, and they run as an
# unprivileged user (uid 10001). Settings come from the environment (SDSERVE_*), see README.md.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# CUDA 13.0 needs an NVIDIA driver >= 580; for older drivers build with
# --build-arg CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS gateway-build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdserve ./sdserve
COPY app ./app
COPY worker ./worker
# Only the gateway's extras: the worker package is present but torch and diffusers are not.
RUN /opt/venv/bin/pip install --no-cache-dir ".[gateway,s3]" \
 && /opt/venv/bin/python -m pip uninstall --yes pip

FROM ${PYTHON_IMAGE} AS gateway
LABEL org.opencontainers.image.title="sdserve gateway" \
      org.opencontainers.image.description="sdserve HTTP gateway and webhook dispatcher (no torch)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 sdserve \
 && useradd --system --uid 10001 --gid sdserve --home-dir /var/lib/sdserve --create-home --shell /usr/sbin/nologin sdserve
COPY --from=gateway-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SDSERVE_HOST=0.0.0.0 \
    SDSERVE_PORT=8000 \
    SDSERVE_DATA_DIR=/var/lib/sdserve
WORKDIR /var/lib/sdserve
USER 10001:10001
EXPOSE 8000
# Ready means Redis answers and the object store takes a write (GET /readyz).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SDSERVE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["sdserve"]
CMD ["gateway"]

# ---------------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS worker-build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_VERSION=2.13.0
# xformers must match torch exactly; when no wheel matches, the worker runs on PyTorch SDPA instead.
ARG INSTALL_XFORMERS=1
ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# Distribution packages are not version-pinned: the security updates of the release are wanted.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv
RUN /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
RUN if [ "${INSTALL_XFORMERS}" = "1" ]; then \
      /opt/venv/bin/pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX_URL}" xformers \
      || echo "no xformers wheel for torch ${TORCH_VERSION}: the worker will use PyTorch SDPA"; \
    fi
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sdserve ./sdserve
COPY app ./app
COPY worker ./worker
RUN /opt/venv/bin/pip install --no-cache-dir ".[worker,s3]" \
 && /opt/venv/bin/python -m pip uninstall --yes pip

FROM ${CUDA_IMAGE} AS worker
LABEL org.opencontainers.image.title="sdserve worker" \
      org.opencontainers.image.description="sdserve GPU worker: warm diffusers pipelines" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV DEBIAN_FRONTEND=noninteractive
# The interpreter only: no pip, no venv tooling, no compiler in the final image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sdserve \
 && useradd --system --uid 10001 --gid sdserve --home-dir /var/lib/sdserve --create-home --shell /usr/sbin/nologin sdserve
COPY --from=worker-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SDSERVE_DATA_DIR=/var/lib/sdserve \
    SDSERVE_READY_FILE=/tmp/sdserve-ready \
    HF_HOME=/var/lib/sdserve/huggingface
WORKDIR /var/lib/sdserve
USER 10001:10001
# The worker touches SDSERVE_READY_FILE once its models are warm and on every heartbeat that reaches
# Redis: healthy means warm and in touch. Warm-up of large models can take minutes, hence start-period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import os, sys, time; sys.exit(time.time() - os.stat(os.environ['SDSERVE_READY_FILE']).st_mtime > 60)"]
ENTRYPOINT ["sdserve"]
CMD ["worker"]
