"""The objects and the nginx configs: the backend ("S3"), and nginx proxy_pass as a peer.

nginx serves `/BUCKET/KEY` from a directory, like path-style S3, but it does not check SigV4
signatures (nor speak any other part of the S3 API): the proxies' requests are signed as for
S3, and nginx simply ignores the signature.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BUCKET = "bench"
SMALL_KEY = "10k.bin"
SMALL_SIZE = 10 * 1024
LARGE_KEY = "100m.bin"
LARGE_SIZE = 100 * 1024 * 1024


@dataclass(frozen=True)
class Objects:
    docroot: Path
    small: bytes  # the 10 KiB object's content, to check answers against


def write_objects(base: Path) -> Objects:
    """docroot/bench/10k.bin and docroot/bench/100m.bin (random bytes, incompressible)."""
    bucket = base / "docroot" / BUCKET
    bucket.mkdir(parents=True)
    small = os.urandom(SMALL_SIZE)
    (bucket / SMALL_KEY).write_bytes(small)
    block = os.urandom(1024 * 1024)
    with (bucket / LARGE_KEY).open("wb") as out:
        for _ in range(LARGE_SIZE // len(block)):
            out.write(block)
    # nginx workers run as an unprivileged user when the harness runs as root.
    for path in (base, base / "docroot", bucket):
        path.chmod(0o755)
    for path in bucket.iterdir():
        path.chmod(0o644)
    return Objects(docroot=base / "docroot", small=small)


def _common(prefix: Path) -> str:
    """Everything an nginx instance writes stays inside `prefix` (a temp dir)."""
    return f"""
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
"""


def _http_common(prefix: Path) -> str:
    return f"""
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
"""


def static_config(prefix: Path, port: int, docroot: Path) -> str:
    """The backend: static files at /BUCKET/KEY, sendfile, one worker, no access log."""
    return f"""{_common(prefix)}
http {{
{_http_common(prefix)}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {docroot};
        location / {{ }}
    }}
}}
"""


def proxy_pass_config(prefix: Path, port: int, backend_port: int) -> str:
    """nginx as a reverse proxy to the backend, /s/KEY -> /bench/KEY, with keep-alive upstream
    connections and in-memory buffering only (never spooling 100 MiB bodies to disk)."""
    return f"""{_common(prefix)}
http {{
{_http_common(prefix)}
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        location /s/ {{
            proxy_pass http://backend/{BUCKET}/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def nginx_argv(nginx: str, prefix: Path, config_text: str) -> list[str]:
    """Write the config into `prefix` and return the command that runs it in the foreground."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(config_text)
    # -e: the error log before the config is read would otherwise go to /var/log/nginx.
    return [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
