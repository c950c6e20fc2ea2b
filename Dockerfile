# The service's image: `docker build --build-arg FLAVOR=cpu .` or `--build-arg FLAVOR=gpu`.
# CPU and GPU images differ only in their base and in requirements/<flavor>.txt
# (onnxruntime vs onnxruntime-gpu). No compilers in the final stage, no secrets anywhere:
# credentials for the registry come from CI variables at push time, never from this file.
# The model files must be in model/ before the build (CI's model job prepares them), with
# their SHA-256 in model/MODEL.sha256: the build refuses a model that does not match it, and the
# server checks it again at start (podserve.runtime.core.model_check).
# CI builds this with BuildKit (buildctl-daemonless.sh, see .gitlab-ci.yml); CI's own tooling has its
# image, Dockerfile.tooling: nothing here installs it, and .dockerignore keeps src/podserve/tooling (and the
# testbed) out of COPY src/. `make image` builds it here (docs/image.md).
#
# PIP_INDEX_URL: the index pip installs the pinned requirements from (empty: PyPI), e.g. a
# company's internal mirror. Only the build stage sees it: it is not in the pushed image or its history.
# Layers, least often changed first: dependencies, the user, the model, then src/ (a code change
# re-pushes only the last layer).

ARG FLAVOR=cpu

FROM python:3.11.7-slim-bookworm@sha256:637774748f62b832dc11e7b286e48cd716727ed04b45a0322776c01bc526afc3 AS python-cpu

FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04@sha256:14d94b039cb94bbd5da559f303b46bc4b0d5d6c24ab1a9d7b186e566ed3400dc AS python-gpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && ln -s /usr/bin/python3 /usr/local/bin/python \
 && rm -rf /var/lib/apt/lists/*

FROM python-${FLAVOR} AS build
ARG FLAVOR
ARG PIP_INDEX_URL=
COPY requirements/ /tmp/requirements/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements/${FLAVOR}.txt

FROM python-${FLAVOR} AS runtime
COPY --from=build /opt/venv /opt/venv
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin podserve
WORKDIR /app
COPY model/ /app/model/
RUN cd /app/model && test -f MODEL.sha256 && sha256sum --check --strict MODEL.sha256
COPY src/ /app/src/
USER 10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/src \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s CMD ["python", "-m", "podserve.runtime.healthcheck"]
CMD ["python", "-m", "podserve.runtime"]
