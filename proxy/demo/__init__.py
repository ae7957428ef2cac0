"""`python -m proxy demo`: the whole product on this machine, no AWS account needed.

An S3-compatible server (moto) runs in-process on loopback, seeded with generated images, an
admin-only report and a large file; the proxy serves them through the same code paths as
`serve`, plus a demo page at `/` that shows the delivery methods side by side with live
counters. The third, `cloudfront`, signs for a loopback STAND-IN for a CloudFront edge
(cloudfront_standin.py, not a CDN) with a key pair made for this run. Nothing is written
outside one temporary directory, removed at exit.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, load_config
from .cloudfront_standin import EdgeThread
from .s3 import CountingS3

PHOTO_SIZES = (96, 128, 192, 256, 320, 384)  # px: six employees, images of different weights
BIG_FILE_BYTES = 24 * 1024 * 1024
UPLOAD_MAX_BYTES = 5 * 1024 * 1024
# Presigned multipart uploads: a generated file of up to this size, in parts of PART_BYTES.
MULTIPART_MAX_BYTES = 1024 * 1024 * 1024
MULTIPART_PART_BYTES = 5 * 1024 * 1024
TOKEN_TTL = 12 * 3600
# The demo's key pair is made for each run; its ID only has to match between proxy and edge.
EDGE_KEY_ID = "KDEMOSTANDIN01"


@dataclass(frozen=True)
class Edge:
    """The stand-in edge of this run and the key file the proxy signs with."""

    thread: EdgeThread
    key_file: Path

    @property
    def origin(self) -> str:
        return self.thread.origin


@dataclass(frozen=True)
class Demo:
    config: Config
    s3: CountingS3
    tokens: dict[str, str]  # role -> token
    share_link: str  # a path with its link token
    edge: Edge | None = None  # the stand-in CloudFront edge, stopped with the demo


def build_routes() -> list[dict[str, Any]]:
    return [
        {
            "name": "photos-stream",
            "match": "/stream/photos/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.png",
            "delivery": "stream",
            "access": "authenticated",
        },
        {
            "name": "photos-redirect",
            "match": "/photos/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.png",
            "delivery": "redirect",
            "access": "authenticated",
            "ttl": 300,
            "stable": 3600,
            "cache_control": "private, max-age=3600",
        },
        # Through the stand-in CloudFront edge: signed cookies for every photo (one proxy
        # request signs a whole gallery), and signed URLs (stable, like the redirect route).
        {
            "name": "photos-cloudfront",
            "match": "/cdn/photos/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.png",
            "delivery": "cloudfront",
            "cookie_scope": "employees/*",
            "access": "authenticated",
            "ttl": 600,
        },
        {
            "name": "photos-cloudfront-url",
            "match": "/cdn/url/photos/{employee_id}",
            "bucket": "hr-private",
            "key": "employees/{employee_id}/photo.png",
            "delivery": "cloudfront",
            "access": "authenticated",
            "ttl": 300,
            "stable": 3600,
        },
        # Uploads, each user into their own folder (the key names the token's sub): a PUT
        # through the proxy, or a PUT answered 307 to a presigned PUT straight to S3.
        *(
            {
                "name": f"uploads-{method}",
                "match": match,
                "bucket": "hr-private",
                "key": "uploads/{claims.sub}/{name}",
                "delivery": method,
                "access": "authenticated",
                "methods": ["GET", "HEAD", "PUT"],
                "upload": {
                    "max_bytes": UPLOAD_MAX_BYTES,
                    "content_types": ["image/*"],
                    "overwrite": True,  # uploading a picture again replaces it
                },
            }
            for method, match in (
                ("stream", "/stream/uploads/{name}"),
                ("redirect", "/uploads/{name}"),
            )
        ),
        # Huge files: the sign API begins a multipart upload and signs a URL per part; the
        # browser sends the parts straight to S3 and can resume after a reload.
        {
            "name": "uploads-multipart",
            "match": "/big/uploads/{name}",
            "bucket": "big-files",
            "key": "uploads/{claims.sub}/{name}",
            "delivery": "redirect",
            "access": "authenticated",
            "methods": ["GET", "HEAD", "POST"],
            "ttl": 900,
            "disposition": "attachment",
            "upload": {
                "max_bytes": MULTIPART_MAX_BYTES,
                "content_types": ["application/octet-stream"],
                "part_size": MULTIPART_PART_BYTES,
                "overwrite": True,
                "multipart": True,
            },
        },
        {
            "name": "admin-reports",
            "match": "/admin/reports/{path:.+}",
            "bucket": "reports",
            "key": "exports/{path}",
            "delivery": "stream",
            "access": {"claims": {"role": "admin"}},
            "disposition": "attachment",
        },
        {
            "name": "big-files",
            "match": "/files/{path:.+}",
            "bucket": "big-files",
            "key": "{path}",
            "delivery": "auto",
            "access": "authenticated",
            "stable": 3600,
            "disposition": "attachment",
        },
    ]


def seed(s3: CountingS3) -> None:
    from .images import portrait_png

    client = s3.client()
    for bucket in ("hr-private", "reports", "big-files"):
        client.create_bucket(Bucket=bucket)
    for number, size in enumerate(PHOTO_SIZES, start=1):
        client.put_object(
            Bucket="hr-private",
            Key=f"employees/{number}/photo.png",
            Body=portrait_png(size, number),
            ContentType="image/png",
            # What the CloudFront edge and browsers keep it by (stream and redirect set their
            # own): set on an object when it is uploaded, as with a real distribution.
            CacheControl="max-age=3600",
        )
    report = "quarter,revenue,headcount\nQ1,1200000,41\nQ2,1350000,44\nQ3,1410000,46\n"
    client.put_object(
        Bucket="reports", Key="exports/q4-report.csv", Body=report.encode(), ContentType="text/csv"
    )
    block = os.urandom(1024 * 1024)
    client.put_object(
        Bucket="big-files",
        Key="dataset.bin",
        Body=block * (BIG_FILE_BYTES // len(block)),
        ContentType="application/octet-stream",
    )


def prepare(workdir: Path, port: int, sign_in: str | None = None) -> Demo:
    """Start S3, seed it, write the demo's config into `workdir` and load it. `sign_in`: the
    issuer URL of a provider to sign in with (then `port` must be the real one)."""
    from ..auth import issue_token
    from ..links import link_target, mint_link_token

    # The demo's S3 is local; these credentials exist only for it.
    os.environ.update(
        AWS_ACCESS_KEY_ID="demo",
        AWS_SECRET_ACCESS_KEY="demo-secret",  # noqa: S106 - moto on loopback only
        AWS_DEFAULT_REGION="us-east-1",
    )
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    s3 = CountingS3()
    s3.start()
    seed(s3)
    s3.reset()  # count only what the demo's visitors cause
    edge = start_edge(workdir, s3.endpoint)
    secret, link_secret = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    data = {
        "listen": {"host": "127.0.0.1", "port": port, "shutdown_grace": 2},
        "s3": {"region": "us-east-1", "endpoint_url": s3.endpoint, "addressing_style": "path"},
        "auth": {"algorithms": ["HS256"], "secret": secret, "link_secret": link_secret},
        # The demo page reads the counters; the demo listens on loopback unless told otherwise.
        "metrics": {"enabled": True, "listen": "main", "path": "/_metrics", "access": "public"},
        "cloudfront": {
            "domain": edge.origin,  # http:// is allowed on loopback only: the stand-in
            "key_pair_id": EDGE_KEY_ID,
            "private_key": str(edge.key_file),
        },
        "routes": build_routes(),
    }
    if sign_in is not None:
        _add_sign_in(data, sign_in, port)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = load_config(path)
    auth = config.settings.auth
    tokens = {
        "employee": issue_token(auth, {"sub": "employee-7", "role": "employee"}, TOKEN_TTL),
        "admin": issue_token(auth, {"sub": "admin-1", "role": "admin"}, TOKEN_TTL),
    }
    target = link_target(config, "/admin/reports/q4-report.csv")
    link = mint_link_token(link_secret, target, TOKEN_TTL, sub="shared-by-admin-1")
    return Demo(config, s3, tokens, f"/admin/reports/q4-report.csv?link={link}", edge)


def start_edge(workdir: Path, s3_endpoint: str, bucket: str = "hr-private") -> Edge:
    """A key pair for this run (the private key in `workdir`, mode 600) and the stand-in
    edge that trusts its public key, serving `bucket` (the demo's photos)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ..cloudfront import VerifyingKey
    from .cloudfront_standin import EdgeOrigin, StandInEdge

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = workdir / "cloudfront-demo-key.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    trusted = {EDGE_KEY_ID: VerifyingKey(EDGE_KEY_ID, private.public_key())}
    thread = EdgeThread(StandInEdge(trusted, EdgeOrigin(s3_endpoint, bucket)))
    thread.start()
    return Edge(thread, key_file)


def _add_sign_in(data: dict[str, Any], issuer: str, port: int) -> None:
    """Browser sign-in beside the demo's own tokens: two issuers, so each route names both."""
    data["auth"].update(name="demo", issuer="s3-proxy-demo")
    data["auth"]["login"] = {
        "issuer": issuer,
        "client_id": "s3-proxy-demo",
        # The embedded provider takes any secret, but no public clients.
        "client_secret": secrets.token_urlsafe(24),
        "public_url": f"http://127.0.0.1:{port}",
        "session_secret": secrets.token_urlsafe(48),
        "logout_redirect": "/",
    }
    for route in data["routes"]:
        route["issuers"] = ["demo", "login"]


def run_demo(host: str, port: int, sign_in: bool = False) -> int:
    from ..logs import configure_logging
    from ..server import run
    from .web import demo_gateway

    configure_logging("INFO")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    if not _is_loopback(host):
        print(
            f"\nWARNING: the demo listens on {host}, not on loopback. Its page hands an ADMIN "
            "token to anyone who can reach it, and its metrics are public. Use it only on a "
            "network you trust; --host 127.0.0.1 keeps it to this machine.\n",
            file=sys.stderr,
            flush=True,
        )
    provider = None
    if sign_in:
        if not _is_loopback(host):
            print("--sign-in runs on loopback only (--host 127.0.0.1)", file=sys.stderr)
            return 2
        from .provider import EmbeddedProvider

        provider = EmbeddedProvider()
        provider.start()
        port = port or _free_port()  # the redirect URI names it before the proxy binds
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="s3-proxy-demo-") as workdir:
        demo = prepare(Path(workdir), port, provider.issuer if provider else None)

        def ready(bound: int) -> None:
            base = f"http://{host}:{bound}"
            print(
                f"\nDemo ready in {time.monotonic() - started:.1f}s: S3 (moto) at "
                f"{demo.s3.endpoint}, proxy at {base}\n\n"
                f"  Open the demo page:   {base}/\n\n"
                f"  Employee token:       {demo.tokens['employee']}\n"
                f"  Admin token:          {demo.tokens['admin']}\n\n"
                f"  Try:  curl -H 'Authorization: Bearer <admin token>' "
                f"{base}/admin/reports/q4-report.csv\n"
                f"        curl -i -H 'Authorization: Bearer <employee token>' {base}/photos/1\n"
                f"        curl -i -H 'Authorization: Bearer <employee token>' "
                f"{base}/cdn/url/photos/1\n"
                f"  CloudFront stand-in edge (not a CDN): {demo.edge.origin if demo.edge else '-'}"
                "\n"
                f"  Share link (no token needed): {base}{demo.share_link}\n\n"
                + (
                    f"  Sign-in provider:     {provider.issuer}\n"
                    f"  Sign in: open {base}/admin/reports/q4-report.csv in a fresh browser "
                    "and pick admin-1 or employee-7 on the provider's form; sign out with "
                    f"the button at {base}/_auth/logout\n\n"
                    if provider
                    else ""
                )
                + "  Ctrl-C stops the demo and removes its temporary files.\n",
                flush=True,
            )

        try:
            run(demo.config, host, port, ready, lambda: demo_gateway(demo))
        finally:
            demo.s3.stop()
            if demo.edge is not None:
                demo.edge.thread.stop()
            if provider is not None:
                provider.stop()
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - exercised via the CLI
    return run_demo("127.0.0.1", 8080 if not argv else int(argv[0]))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
