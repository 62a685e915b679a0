# secretmirror: `docker build -t secretmirror .` then `docker run secretmirror serve`.
# compose.yaml builds this image for the daemon and for the one-shot `db upgrade`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package first, so code-only changes reuse the layer below.
COPY pyproject.toml README.md ./
COPY daemon ./daemon
RUN pip install . && rm -rf daemon build pyproject.toml README.md

# The migrations live at the repository root, outside the installed package.
COPY migrations ./migrations

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/secretmirror secretmirror \
    && mkdir -p /var/lib/secretmirror \
    && chown secretmirror:secretmirror /var/lib/secretmirror

ENV SECRETMIRROR_MIGRATIONS_DIR=/app/migrations \
    SECRETMIRROR_DATA_DIR=/var/lib/secretmirror \
    SECRETMIRROR_LISTEN=0.0.0.0:8750

USER secretmirror
VOLUME ["/var/lib/secretmirror"]
EXPOSE 8750

HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8750/readyz', timeout=2)"]

ENTRYPOINT ["secretmirror"]
CMD ["serve"]
