# The proxy as a container: slim Python, non-root, config mounted at /etc/s3-proxy/config.yaml.
#   docker build -t s3-private-proxy .
#   docker run -p 8080:8080 -e JWT_SECRET -e AWS_REGION -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY \
#     -v "$PWD/config.yaml:/etc/s3-proxy/config.yaml:ro" s3-private-proxy
# The shipped config talks to AWS S3 (S3_ENDPOINT_URL unset or empty); set S3_ENDPOINT_URL
# (and S3_ADDRESSING_STYLE=path for MinIO by host name) for an S3-compatible server.
# The default command listens on 0.0.0.0 inside the container whatever listen.host says.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip install . \
 && groupadd --system --gid 10001 proxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home proxy \
 && mkdir -p /etc/s3-proxy

COPY config.yaml /etc/s3-proxy/config.yaml

# Numeric, so that Kubernetes' runAsNonRoot can check it. Nothing is written outside /tmp
# (no bytecode, the optional pid file goes where listen.pid_file says): the image runs with a
# read-only root filesystem and /tmp as an emptyDir (deploy/kubernetes).
USER 10001:10001
EXPOSE 8080
# python, as the slim image has no curl; assumes listen.port 8080, as EXPOSE does.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "proxy"]
CMD ["serve", "--config", "/etc/s3-proxy/config.yaml", "--host", "0.0.0.0"]
