# callauth container image.
#
#   docker build -t callauth .
#   docker run --rm -p 127.0.0.1:8080:8080 -e CALLAUTH_API_KEYS="app:$(openssl rand -hex 16)" callauth
#
# The image listens on 0.0.0.0, so it refuses to start with the built-in `dev`
# key: CALLAUTH_API_KEYS is required.
#
# Python 3.13: the newest the test suite passes on (it also runs on 3.11 and
# 3.12). Every runtime dependency ships manylinux wheels for CPython 3.13
# (amd64 and arm64), so the builder needs no compiler: it only creates a venv
# and installs the project into it. scripts/check-deploy.sh repeats these
# steps without Docker, on a local python3.13; keep the two in step. Both
# stages use the same pinned base (the venv's python symlinks to the base
# image's /usr/local/bin/python3.13).

# ---------------------------------------------------------------- builder
FROM python:3.13.7-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ ./service/
# EXTRAS=otel adds OpenTelemetry (README, Operations, "Tracing"):
#   docker build --build-arg EXTRAS=otel -t callauth .
ARG EXTRAS=""
# The project itself (its extras at most), not a package from the index: nothing to pin.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".${EXTRAS:+[$EXTRAS]}"

# ---------------------------------------------------------------- runtime
FROM python:3.13.7-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="callauth" \
      org.opencontainers.image.description="Flash-call and voice-call phone verification over New-Tel"

# A fixed, unprivileged uid/gid: Kubernetes' runAsUser: 10001 and
# runAsNonRoot rely on it being numeric.
RUN groupadd --system --gid 10001 callauth \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin callauth

COPY --from=builder /opt/venv /opt/venv

ENV CALLAUTH_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app
USER 10001
EXPOSE 8080

# slim has no curl/wget: probe with the standard library. Honours
# CALLAUTH_PORT if it is overridden; any non-2xx or error exits non-zero.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CALLAUTH_PORT', '8080') + '/healthz', timeout=3)"]

ENTRYPOINT ["python", "-m", "service"]
