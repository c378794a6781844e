# syntax=docker/dockerfile:1
#
# Face VAE inference service: two serving images from one file, chosen by build target.
#
#   docker build -t facevae:cpu .                  # target `cpu` (the last stage, so the default)
#   docker build -t facevae:gpu --target gpu .     # NVIDIA CUDA base + onnxruntime-gpu
#
# Each image holds exactly one onnxruntime package (the `cpu` or `gpu` extra; both in one environment overwrite
# each other's files) and never TensorFlow: `training/` is built into the wheel as plain source, but its
# dependencies live only in the `train` extras, which are never installed here. The CPU image bakes in the int8
# bundle models/celeba-64-int8 at /models/celeba-64-int8 (about half the CPU per face, judged as good: see
# docs/benchmarks.md), the GPU image the float32 models/celeba-64 at /models/celeba-64; mount another bundle and
# point FACEVAE_MODEL at it to replace it. The service is configured by FACEVAE_* variables only (see service/api/settings.py).
#
# BuildKit (the default builder since Docker 23) builds only the stages the chosen target needs, so the CPU
# image never pulls the CUDA base.

ARG PYTHON_IMAGE=python:3.11-slim
# The GPU base must provide the CUDA runtime libraries (cudart, cuBLAS, cuFFT, cuRAND) and cuDNN 9 of the CUDA
# major version the onnxruntime-gpu wheel from PyPI is built for: CUDA 13 for onnxruntime-gpu 1.31. Its
# `cudnn-runtime` flavour has both, without the compilers of `devel`. CUDA 13.0 needs host driver 580 or newer.
# Ubuntu 24.04 ships Python 3.12, which the project supports (requires-python >=3.11,<3.13).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- cpu-build: the project with onnxruntime (CPU) in a virtual environment ----------------------------------
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# README* is optional (pyproject names it; setuptools only warns when it is missing).
COPY pyproject.toml README* ./
COPY service/ service/
COPY training/ training/
COPY facevae_client/ facevae_client/
# pip builds the project's wheel here and installs it with its `cpu` extra; the check refuses an environment
# holding the other onnxruntime or TensorFlow.
RUN /opt/venv/bin/pip install ".[cpu]" \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import importlib.metadata as m, sys; names = {(d.metadata['Name'] or '').lower().replace('_', '-') for d in m.distributions()}; bad = names & {'onnxruntime-gpu', 'tensorflow', 'tensorflow-cpu', 'keras', 'tf2onnx'}; sys.exit(f'unwanted packages: {sorted(bad)}' if bad else 0)"

# ---- gpu-build: the project with onnxruntime-gpu, on the same base (and Python) as the GPU image -------------
FROM ${CUDA_IMAGE} AS gpu-build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README* ./
COPY service/ service/
COPY training/ training/
COPY facevae_client/ facevae_client/
RUN /opt/venv/bin/pip install ".[gpu]" \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -c "import importlib.metadata as m, sys; names = {(d.metadata['Name'] or '').lower().replace('_', '-') for d in m.distributions()}; bad = names & {'onnxruntime', 'tensorflow', 'tensorflow-cpu', 'keras', 'tf2onnx'}; sys.exit(f'unwanted packages: {sorted(bad)}' if bad else 0)"

# ---- gpu: the GPU serving image --------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu
# Only the interpreter the virtual environment links to; no pip, no compilers.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin facevae
COPY --from=gpu-build /opt/venv /opt/venv
# The default bundle, owned by root and read-only for the service user.
COPY models/celeba-64/ /models/celeba-64/
# Listen on all interfaces inside the container; the model path is the baked copy unless overridden.
# FACEVAE_PROVIDERS stays empty: CUDA first when the GPU is visible. Set FACEVAE_REQUIRE_GPU=true to report
# not-ready instead of silently serving on CPU (docker-compose.yml does for its `gpu` profile).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEVAE_MODEL=/models/celeba-64 \
    FACEVAE_HOST=0.0.0.0 \
    FACEVAE_PORT=8000
WORKDIR /srv
USER 10001:10001
EXPOSE 8000
# Readiness (model loaded and warmed up), not mere liveness. Python's urllib, so no curl is needed; it reads the
# port from FACEVAE_PORT, so change the port by that variable, not a --port flag. A 503 raises -> exit 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('FACEVAE_PORT', '8000'), timeout=4)"]
# Exec form: python is PID 1 and gets SIGTERM itself. Uvicorn then stops accepting connections, finishes the
# requests in flight, runs the app's shutdown and exits 0 (see docs/deploy.md).
CMD ["python", "-m", "service"]

# ---- cpu: the CPU serving image (last stage, so the default target) --------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin facevae
COPY --from=cpu-build /opt/venv /opt/venv
# The int8 sibling of the default bundle: on CPUs it costs about half the CPU per face at the same judged quality.
COPY models/celeba-64-int8/ /models/celeba-64-int8/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FACEVAE_MODEL=/models/celeba-64-int8 \
    FACEVAE_HOST=0.0.0.0 \
    FACEVAE_PORT=8000
WORKDIR /srv
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/ready' % os.environ.get('FACEVAE_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]
