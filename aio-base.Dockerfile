# AIO Federation agent image: one image, one department per container, configured by environment.
#
#   docker buildx build -f aio-base.Dockerfile --build-arg BASE_IMAGE=python:3.11-slim \
#       --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt -t aio-federation-agent .
#
# No "# syntax=" line on purpose: it must build with the engine's built-in Dockerfile frontend and
# no registry to fetch a frontend from. BASE_IMAGE must be the same for both stages: the venv's
# python is a symlink to the base image's python.
ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_WARN_SCRIPT_LOCATION=1 \
    PYTHONDONTWRITEBYTECODE=1
# strip (binutils) is used by the trim step below; the builder stage is thrown away.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt /tmp/requirements.txt
# pip_ca: optional CA bundle for a TLS-intercepting proxy. A BuildKit secret (never a layer, never a
# build-arg, which provenance would record), used only when the build was given one.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_ca,required=false \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r /tmp/requirements.txt
# Trim: the LAST builder step (a later pip install would bring removed distributions back).
#  - distributions never imported at run time: grpcio and the OTLP gRPC exporter (we export OTLP
#    over HTTP), types-protobuf (type stubs), sounddevice (local audio devices, console mode only);
#  - pip, setuptools, wheel; tests/ directories; debug symbols of extension modules outside
#    *.libs/ (the auditwheel-vendored libraries there break when stripped, e.g. numpy's openblas);
#  - .pyc files stay: without them every start imports in ~3.8 s instead of ~2.1 s, and the
#    non-root runtime user could never cache them.
# The smoke import at the end proves the trimmed venv still imports what the agent uses.
RUN /opt/venv/bin/pip uninstall -y -q grpcio opentelemetry-exporter-otlp-proto-grpc \
        opentelemetry-exporter-otlp types-protobuf sounddevice \
    && /opt/venv/bin/pip uninstall -y -q pip setuptools wheel \
    && find /opt/venv/lib -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
        -exec rm -rf {} + \
    && find /opt/venv/lib -type f -name '*.so*' -not -path '*.libs/*' \
        -exec strip --strip-unneeded {} + \
    && /opt/venv/bin/python -c 'import asyncpg, aiohttp, cryptography, prometheus_client, pydantic, \
structlog, yaml, livekit.agents, livekit.api, livekit.rtc, livekit.plugins.openai, \
opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter'

# ---------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# tini: PID 1 that forwards signals to the process group (-g) and maps SIGTERM's 143 to success.
# No setuid/setgid files left: nothing in the image can gain privileges.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /app \
        --shell /usr/sbin/nologin agent \
    && mkdir -p /app/config \
    && chown agent:agent /app/config \
    && chmod 0700 /app/config \
    && find / -xdev -type f -perm /6000 -exec chmod a-s {} +
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CONFIG_PATH=/app/config/config.yaml
COPY --from=builder --chown=root:root /opt/venv /opt/venv
WORKDIR /app
# Code last (it changes most often); root-owned and read-only for the agent.
COPY --chown=root:root --chmod=0755 entrypoint.sh healthcheck.py /app/
COPY --chown=root:root --chmod=0755 migrations/ /app/migrations/
COPY --chown=root:root --chmod=0755 examples/ /app/examples/
COPY --chown=root:root --chmod=0755 aio_agent/ /app/aio_agent/
USER 1000:1000
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "--live"]
ENTRYPOINT ["tini", "-g", "-e", "143", "--", "/app/entrypoint.sh"]
CMD ["python", "-m", "aio_agent", "start"]

ARG VERSION=dev
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
ARG LICENSES=NOASSERTION
LABEL org.opencontainers.image.title="aio-federation-agent" \
      org.opencontainers.image.description="LiveKit voice agent, one department per container, configured by environment variables" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="${LICENSES}"
