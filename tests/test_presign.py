"""The presigner and URL lifetimes, checked against botocore's own SigV4 signer. No I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.auth import SIGV4_TIMESTAMP, S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials

from proxy.presign import (
    Credentials,
    Endpoint,
    LifetimeError,
    aws_endpoint,
    plan_lifetime,
    presign_post,
    presign_url,
    sign_request,
)

from .sigv4 import verify_presigned_url

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
T0 = 1_900_000_000  # a fixed "now"


class _BotocoreAtTime(S3SigV4QueryAuth):
    """botocore's presigner, signing at a chosen time instead of the wall clock."""

    def __init__(self, credentials: BotoCredentials, region: str, expires: int, at: int) -> None:
        super().__init__(credentials, "s3", region, expires)
        self._at = at

    def add_auth(self, request: AWSRequest) -> None:
        request.context["timestamp"] = datetime.fromtimestamp(self._at, UTC).strftime(
            SIGV4_TIMESTAMP
        )
        self._modify_request_before_signing(request)
        canonical_request = self.canonical_request(request)
        string_to_sign = self.string_to_sign(request, canonical_request)
        self._inject_signature_to_request(request, self.signature(string_to_sign, request))


def _botocore_url(
    url_without_auth: str,
    params: dict[str, str],
    creds: Credentials,
    expires: int,
    at: int,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> str:
    request = AWSRequest(method=method, url=url_without_auth, params=params, headers=headers)
    signer = _BotocoreAtTime(
        BotoCredentials(creds.access_key, creds.secret_key, creds.token), "eu-west-1", expires, at
    )
    signer.add_auth(request)
    return str(request.prepare().url)


def _sorted_query(url: str) -> tuple[str, list[tuple[str, str]]]:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", sorted(parse_qsl(parts.query))


@pytest.mark.parametrize("key", ["plain.jpg", "dir/sub/a b+c.pdf", "unicodé/€.txt", 'we"ird;x=1'])
@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEBYaD+session/token=="])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_signature_equals_botocores(key: str, token: str | None, method: str) -> None:
    creds = Credentials(CREDS.access_key, CREDS.secret_key, token)
    endpoint = Endpoint.parse("https://s3.eu-west-1.amazonaws.com", "path")
    overrides = {"response-content-disposition": 'attachment; filename="a b.pdf"'}
    ours = presign_url(
        endpoint=endpoint,
        region="eu-west-1",
        credentials=creds,
        method=method,
        bucket="my-bucket",
        key=key,
        signed_at=T0,
        expires_in=900,
        params=overrides,
    )
    base, _ = _sorted_query(ours)
    theirs = _botocore_url(base, overrides, creds, 900, T0, method)
    assert _sorted_query(ours) == _sorted_query(theirs)
    verify_presigned_url(ours, secret_key=creds.secret_key, method=method)


def test_same_inputs_give_the_identical_url() -> None:
    endpoint = Endpoint.parse("http://127.0.0.1:9000", "auto")
    urls = {
        presign_url(
            endpoint=endpoint,
            region="us-east-1",
            credentials=CREDS,
            method="GET",
            bucket="b-1",
            key="k",
            signed_at=T0,
            expires_in=60,
        )
        for _ in range(3)
    }
    assert len(urls) == 1


@pytest.mark.parametrize(
    ("endpoint", "style", "bucket", "host", "path"),
    [
        (
            "https://s3.eu-west-1.amazonaws.com",
            "auto",
            "photos",
            "photos.s3.eu-west-1.amazonaws.com",
            "/k.jpg",
        ),
        (
            "https://s3.eu-west-1.amazonaws.com",
            "auto",
            "my.dotted",
            "s3.eu-west-1.amazonaws.com",
            "/my.dotted/k.jpg",
        ),
        (
            "https://s3.eu-west-1.amazonaws.com",
            "path",
            "photos",
            "s3.eu-west-1.amazonaws.com",
            "/photos/k.jpg",
        ),
        ("http://minio:9000", "virtual", "photos", "photos.minio:9000", "/k.jpg"),
        ("http://127.0.0.1:9000", "auto", "photos", "127.0.0.1:9000", "/photos/k.jpg"),
        ("http://localhost:9000", "auto", "photos", "localhost:9000", "/photos/k.jpg"),
        ("https://cdn.example/s3", "path", "photos", "cdn.example", "/s3/photos/k.jpg"),
    ],
)
def test_addressing(endpoint: str, style: str, bucket: str, host: str, path: str) -> None:
    assert Endpoint.parse(endpoint, style).locate(bucket, "k.jpg") == (host, path)


def test_aws_endpoint_is_regional() -> None:
    assert aws_endpoint("eu-central-1") == "https://s3.eu-central-1.amazonaws.com"


def test_credentials_repr_hides_the_secret() -> None:
    text = repr(Credentials("AKIDEXAMPLE", "very-secret", "session-token"))
    assert "very-secret" not in text and "session-token" not in text


# Lifetimes


def test_without_stable_the_url_is_signed_now_for_ttl() -> None:
    life = plan_lifetime(T0 + 0.7, ttl=300)
    assert (life.signed_at, life.expires_in, life.max_age) == (T0, 300, 0)


def test_stable_window_signs_at_the_window_start() -> None:
    start = T0 // 3600 * 3600
    early = plan_lifetime(start + 1, ttl=300, stable=3600)
    late = plan_lifetime(start + 3599, ttl=300, stable=3600)
    assert (early.signed_at, early.expires_in) == (late.signed_at, late.expires_in)
    assert (early.signed_at, early.expires_in) == (start, 3900)
    # valid for at least ttl from any moment in the window
    assert late.expires_at - (start + 3599) >= 300
    nxt = plan_lifetime(start + 3600, ttl=300, stable=3600)
    assert nxt.signed_at == start + 3600


def test_stable_redirect_may_be_cached_until_shortly_before_expiry() -> None:
    start = T0 // 600 * 600
    life = plan_lifetime(start + 100, ttl=300, stable=600)
    remaining = life.expires_at - (start + 100)
    assert 0 < life.max_age < remaining
    assert remaining - life.max_age >= 5


def test_url_never_outlives_the_token() -> None:
    life = plan_lifetime(T0, ttl=3600, token_expires_at=T0 + 120)
    assert life.expires_at == T0 + 120


def test_url_never_outlives_temporary_credentials() -> None:
    start = T0 // 3600 * 3600
    life = plan_lifetime(start + 10, ttl=300, stable=3600, credentials_expire_at=start + 1000)
    assert life.expires_at == start + 1000


def test_token_already_past_its_exp_cannot_get_a_url() -> None:
    with pytest.raises(LifetimeError) as caught:
        plan_lifetime(T0, ttl=300, token_expires_at=T0 - 5)  # accepted within leeway
    assert caught.value.limit == "token"


def test_expired_credentials_cannot_sign() -> None:
    with pytest.raises(LifetimeError) as caught:
        plan_lifetime(T0, ttl=300, credentials_expire_at=T0)
    assert caught.value.limit == "credentials"


def test_expiry_is_capped_at_seven_days() -> None:
    life = plan_lifetime(T0, ttl=604800, stable=604800)
    assert life.expires_in == 604800


@pytest.mark.parametrize("key", ["plain.jpg", "dir/a b+c~d.pdf", "unicodé/€.txt"])
@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEBYaD+session/token=="])
def test_request_signature_equals_botocores(key: str, token: str | None) -> None:
    creds = Credentials(CREDS.access_key, CREDS.secret_key, token)
    # https: where botocore, too, signs with UNSIGNED-PAYLOAD
    endpoint = Endpoint.parse("https://s3.eu-west-1.amazonaws.com", "path")
    host, path, headers = sign_request(
        endpoint=endpoint,
        region="eu-west-1",
        credentials=creds,
        method="GET",
        bucket="my-bucket",
        key=key,
        now=T0,
    )
    request = AWSRequest(
        method="GET",
        url=f"https://{host}{path}",
        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
    )
    request.context["timestamp"] = datetime.fromtimestamp(T0, UTC).strftime(SIGV4_TIMESTAMP)
    # UNSIGNED-PAYLOAD, as the proxy sends for requests without a body
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    signer = S3SigV4Auth(
        BotoCredentials(creds.access_key, creds.secret_key, token), "s3", "eu-west-1"
    )
    signer._modify_request_before_signing(request)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    assert headers["authorization"].endswith(f"Signature={expected}")
    assert headers["x-amz-date"] == request.headers["X-Amz-Date"]
    if token:
        assert headers["x-amz-security-token"] == token


def test_a_signed_query_equals_botocores() -> None:
    """The readiness probe's ListObjectsV2 signs its query string too."""
    endpoint = Endpoint.parse("https://s3.eu-west-1.amazonaws.com", "path")
    host, target, headers = sign_request(
        endpoint=endpoint,
        region="eu-west-1",
        credentials=CREDS,
        method="GET",
        bucket="my-bucket",
        key="",
        now=T0,
        query={"max-keys": "0", "list-type": "2"},
    )
    assert target == "/my-bucket/?list-type=2&max-keys=0"
    request = AWSRequest(
        method="GET",
        url=f"https://{host}{target}",
        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
    )
    request.context["timestamp"] = datetime.fromtimestamp(T0, UTC).strftime(SIGV4_TIMESTAMP)
    request.context["client_config"] = Config(s3={"payload_signing_enabled": False})
    signer = S3SigV4Auth(BotoCredentials(CREDS.access_key, CREDS.secret_key), "s3", "eu-west-1")
    signer._modify_request_before_signing(request)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    assert headers["authorization"].endswith(f"Signature={expected}")


def test_post_policy_pins_key_type_and_size_and_verifies_independently() -> None:
    signed_at = 1_700_000_000  # 2023-11-14T22:13:20Z
    form = presign_post(
        endpoint=Endpoint.parse("https://s3.eu-west-1.amazonaws.com", "auto"),
        region="eu-west-1",
        credentials=Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG", token="session"),
        bucket="uploads-bucket",
        key="users/alice/a b.png",
        content_type="image/png",
        max_bytes=1000,
        signed_at=signed_at,
        expires_at=signed_at + 300,
    )
    assert form.url == "https://uploads-bucket.s3.eu-west-1.amazonaws.com/"
    fields = form.fields
    assert fields["key"] == "users/alice/a b.png"
    assert fields["x-amz-date"] == "20231114T221320Z"
    assert fields["x-amz-credential"] == "AKIDEXAMPLE/20231114/eu-west-1/s3/aws4_request"
    assert fields["x-amz-security-token"] == "session"
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert policy["expiration"] == "2023-11-14T22:18:20Z"
    assert policy["conditions"] == [
        {"bucket": "uploads-bucket"},
        {"key": "users/alice/a b.png"},
        {"Content-Type": "image/png"},
        {"x-amz-algorithm": "AWS4-HMAC-SHA256"},
        {"x-amz-credential": "AKIDEXAMPLE/20231114/eu-west-1/s3/aws4_request"},
        {"x-amz-date": "20231114T221320Z"},
        {"x-amz-security-token": "session"},
        ["content-length-range", 0, 1000],
    ]
    # SigV4 for POST: the string to sign is the base64 policy itself.
    key = b"AWS4wJalrXUtnFEMI/K7MDENG"
    for part in ("20231114", "eu-west-1", "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, fields["policy"].encode(), hashlib.sha256).hexdigest()
    assert fields["x-amz-signature"] == expected


def test_presigned_put_signs_the_declared_headers() -> None:
    url = presign_url(
        endpoint=Endpoint.parse("http://127.0.0.1:9000", "path"),
        region="us-east-1",
        credentials=Credentials("AKID", "secret"),
        method="PUT",
        bucket="b",
        key="k.txt",
        signed_at=1_700_000_000,
        expires_in=60,
        signed_headers={"content-type": "text/plain", "content-length": "5"},
    )
    params = verify_presigned_url(
        url,
        secret_key="secret",
        method="PUT",
        headers={"content-type": "text/plain", "content-length": "5"},
    )
    assert params["X-Amz-SignedHeaders"] == "content-length;content-type;host"
    with pytest.raises(AssertionError):  # another type: S3 would refuse the signature
        verify_presigned_url(
            url,
            secret_key="secret",
            method="PUT",
            headers={"content-type": "text/html", "content-length": "5"},
        )


def test_presigned_put_with_signed_headers_equals_botocores() -> None:
    endpoint = Endpoint.parse("https://s3.eu-west-1.amazonaws.com", "path")
    ours = presign_url(
        endpoint=endpoint,
        region="eu-west-1",
        credentials=CREDS,
        method="PUT",
        bucket="my-bucket",
        key="up/a b.png",
        signed_at=T0,
        expires_in=300,
        signed_headers={"content-type": "image/png", "content-length": "1234"},
    )
    base, _ = _sorted_query(ours)
    headers = {"Content-Type": "image/png", "Content-Length": "1234"}
    theirs = _botocore_url(base, {}, CREDS, 300, T0, "PUT", headers)
    assert _sorted_query(ours) == _sorted_query(theirs)


def test_the_builtin_engines_remembered_signature_is_that_of_its_exact_inputs() -> None:
    """The engine reuses a request's signed head within its second (issue 26); anything that
    changes the signed request must give another signature."""
    from proxy.engines.builtin import _signed
    from proxy.upstream import request_head

    endpoint = Endpoint.parse("https://s3.eu-west-1.amazonaws.com", "path")
    sse = (("x-amz-server-side-encryption-customer-key", "a2V5"),)
    base = (endpoint, "eu-west-1", CREDS, "GET", "bucket", "k", T0, (), ())
    origin, head = first = _signed(*base)
    assert _signed(*base) is first
    host, target, headers = sign_request(
        endpoint=endpoint,
        region="eu-west-1",
        credentials=CREDS,
        method="GET",
        bucket="bucket",
        key="k",
        now=T0,
    )
    assert head == request_head("GET", target, host, list(headers.items()))
    assert (origin.host, origin.port) == ("s3.eu-west-1.amazonaws.com", 443)
    ranged = _signed(*base, (("Range", "bytes=0-9"),))
    assert ranged[1] == head[:-2] + b"Range: bytes=0-9\r\n\r\n"  # unsigned, after the rest

    def signature(found: tuple[object, bytes]) -> bytes:
        return found[1].split(b"Signature=", 1)[1].split(b"\r\n", 1)[0]

    other_creds = Credentials(CREDS.access_key, "another-secret")
    for changed in (
        (endpoint, "eu-west-1", other_creds, "GET", "bucket", "k", T0, (), ()),
        (endpoint, "eu-west-1", CREDS, "HEAD", "bucket", "k", T0, (), ()),
        (endpoint, "eu-west-1", CREDS, "GET", "other", "k", T0, (), ()),
        (endpoint, "eu-west-1", CREDS, "GET", "bucket", "k2", T0, (), ()),
        (endpoint, "eu-west-1", CREDS, "GET", "bucket", "k", T0 + 1, (), ()),
        (endpoint, "eu-west-1", CREDS, "GET", "bucket", "k", T0, (("list-type", "2"),), ()),
        (endpoint, "eu-west-1", CREDS, "GET", "bucket", "k", T0, (), sse),
    ):
        assert signature(_signed(*changed)) != signature(first)


def _plan_as_written_before(
    now: float,
    ttl: int,
    stable: int | None,
    token_expires_at: float | None,
    credentials_expire_at: float | None,
) -> tuple[int, int, int] | str:
    """plan_lifetime as it read with min() and max(): the reference its comparisons keep."""
    if stable:
        signed_at = int(now // stable * stable)
        end = signed_at + stable + ttl
    else:
        signed_at = int(now)
        end = signed_at + ttl
    limit = None
    for name, cap in (("token", token_expires_at), ("credentials", credentials_expire_at)):
        if cap is not None and cap < end:
            end, limit = int(cap), name
    if end <= now:
        return limit or "ttl"
    expires_in = min(end - signed_at, 604800)
    remaining = signed_at + expires_in - now
    margin = min(60.0, max(5.0, remaining / 10))
    max_age = int(remaining - margin) if stable else 0
    return (signed_at, expires_in, max(max_age, 0))


def test_plan_lifetime_chooses_as_min_and_max_did() -> None:
    start = 1_700_000_000 // 3600 * 3600
    caps = (None, -10, 0, 30, 49.5, 50, 51, 300, 600, 650.5, 4000, 700_000)
    for offset in (0, 0.25, 1, 49.9, 50, 599.5, 3599.9):
        now = start + offset
        for ttl, stable in ((300, None), (300, 3600), (60, 600), (604800, 3600), (5, 60)):
            for token in caps:
                for creds in caps:
                    token_at = None if token is None else now + token
                    creds_at = None if creds is None else start + creds
                    expected = _plan_as_written_before(now, ttl, stable, token_at, creds_at)
                    try:
                        got: tuple[int, int, int] | str = tuple(
                            plan_lifetime(now, ttl, stable, token_at, creds_at)
                        )
                    except LifetimeError as exc:
                        got = exc.limit
                    assert got == expected, (now, ttl, stable, token_at, creds_at)
