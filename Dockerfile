# distcomp-obs: one image for the worker, the exporter, the load generator and the CLI.
FROM python:3.11.9-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY distcomp_obs ./distcomp_obs
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /home/distcomp --create-home distcomp

USER distcomp
WORKDIR /home/distcomp
# Metrics: exporter 9711 (and /sd, /healthz); workers 9712.
EXPOSE 9711 9712
ENTRYPOINT ["distcomp"]
CMD ["--help"]
