"""SSE-C customer keys: checked at load, refused where a browser would need them, and sent and
signed by both engines on every GET and HEAD.

Neither moto nor s3rver implements SSE-C, so what reaches S3 is checked on the wire: FaultyS3
(our own S3 on loopback, forwarding to moto) records each request's headers, and tests/sigv4.py
recomputes their signature.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, parse_config
from proxy.ssec import CustomerKey

from .conftest import S3Objects, bearer, build_config, config_dict, make_token
from .fakes import FakeStorage
from .faulty_s3 import FaultyS3
from .sigv4 import verify_signed_request

pytestmark = pytest.mark.both_engines

RAW_KEY = b"0123456789abcdef0123456789ABCDEF"  # 32 bytes
SSE_HEADERS = {
    "x-amz-server-side-encryption-customer-algorithm": "AES256",
    "x-amz-server-side-encryption-customer-key": base64.b64encode(RAW_KEY).decode(),
    "x-amz-server-side-encryption-customer-key-md5": base64.b64encode(
        hashlib.md5(RAW_KEY).digest()  # noqa: S324 (S3's own checksum of the key)
    ).decode(),
}


def _sealed_route(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "sealed",
        "match": "/sealed/{path:.+}",
        "bucket": "reports",
        "key": "exports/{path}",
        "delivery": "stream",
        "access": "authenticated",
        "sse_customer_key": base64.b64encode(RAW_KEY).decode(),
        **overrides,
    }


def _config(endpoint: str | None, **route: Any) -> dict[str, Any]:
    data = config_dict(endpoint)
    data["routes"].append(_sealed_route(**route))
    return data


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(data)
    return caught.value.problems


def test_a_key_is_32_raw_bytes_or_their_base64() -> None:
    assert CustomerKey.parse(RAW_KEY.decode()).key == RAW_KEY
    assert CustomerKey.parse(base64.b64encode(RAW_KEY).decode()).key == RAW_KEY
    assert CustomerKey(RAW_KEY).headers == SSE_HEADERS
    assert "0123" not in repr(CustomerKey(RAW_KEY))


@pytest.mark.parametrize("given", ["short", base64.b64encode(b"k" * 16).decode(), "!" * 44])
def test_a_wrong_key_is_named_at_load_without_echoing_it(given: str) -> None:
    (problem,) = _problems(_config(None, sse_customer_key=given))
    assert problem.startswith("routes[9] (sealed).sse_customer_key: must be a 256-bit AES key")
    assert "openssl rand -base64 32" in problem
    assert given not in problem


def test_a_key_from_the_environment_is_loaded() -> None:
    data = _config(None, sse_customer_key="${SEALED_KEY}")
    env = {"SEALED_KEY": base64.b64encode(RAW_KEY).decode()}
    config = parse_config(yaml.safe_dump(data), env=env)
    assert config.routes[-1].sse == CustomerKey(RAW_KEY)
    assert config.routes[0].sse is None


@pytest.mark.parametrize("delivery", ["redirect", "auto"])
def test_a_key_on_a_route_that_may_redirect_is_refused(delivery: str) -> None:
    """A browser following a presigned URL cannot send the key headers S3 requires."""
    (problem,) = _problems(_config(None, delivery=delivery))
    assert problem.startswith(
        f"routes[9] (sealed).sse_customer_key: needs delivery: stream (got {delivery})"
    )
    assert "browser" in problem


async def test_the_route_key_reaches_the_storage_seam_on_get_and_head(proxy) -> None:
    fake = FakeStorage(objects={("reports", "exports/a.txt"): b"sealed"})
    client = await proxy(_config("http://127.0.0.1:1"), storage=fake)
    alice = bearer(make_token())
    assert await (await client.get("/sealed/a.txt", headers=alice)).read() == b"sealed"
    assert (await client.head("/sealed/a.txt", headers=alice)).status == 200
    assert (await client.get("/me/notes.txt", headers=alice)).status == 404
    assert fake.sse_keys == [CustomerKey(RAW_KEY), CustomerKey(RAW_KEY), None]


@pytest.fixture
async def faulty(s3: S3Objects) -> AsyncIterator[FaultyS3]:
    server = FaultyS3(upstream=s3.endpoint)
    await server.start()
    yield server
    await server.close()


async def test_both_engines_send_and_sign_the_key_headers(
    proxy, s3: S3Objects, faulty: FaultyS3
) -> None:
    client = await proxy(_config(faulty.url))
    alice = bearer(make_token())
    got = await client.get("/sealed/q4.pdf", headers=alice)
    assert (got.status, await got.read()) == (200, s3.report)
    ranged = await client.get("/sealed/q4.pdf", headers={**alice, "Range": "bytes=0-3"})
    assert (ranged.status, await ranged.read()) == (206, s3.report[:4])
    assert (await client.head("/sealed/q4.pdf", headers=alice)).status == 200
    plain = await client.get("/admin/exports/q4.pdf", headers=bearer(make_token(role="admin")))
    assert plain.status == 200
    assert len(faulty.paths) == 4
    for request_line, sent in zip(faulty.paths[:3], faulty.headers[:3], strict=True):
        assert {name: sent.get(name) for name in SSE_HEADERS} == SSE_HEADERS
        method, path = request_line.split(" ", 1)
        signed = verify_signed_request(method, path, sent, secret_key="testing")
        assert set(SSE_HEADERS) <= set(signed)
    assert not set(SSE_HEADERS) & set(faulty.headers[3])


OTHER_KEY = b"fedcba9876543210FEDCBA9876543210"


def _md5_base64(key: bytes) -> str:
    return base64.b64encode(hashlib.md5(key).digest()).decode()  # noqa: S324 (S3's own)


async def test_a_body_read_with_one_customer_key_never_answers_another(
    proxy, s3: S3Objects, faulty: FaultyS3
) -> None:
    """Issue 21 item 1. Four routes name one object: `sealed` with its key, `resealed` with
    another, `unsealed` with none (all three cached), `auto` with none (metadata cache). S3
    refuses the last three; after `sealed` has read the object, it must still refuse them,
    not the proxy's caches answer them with `sealed`'s plaintext or its metadata."""
    other = base64.b64encode(OTHER_KEY).decode()
    cached = {"cache": {"max_age": 60}}
    data = _config(faulty.url, **cached)
    data["routes"] += [
        _sealed_route(
            name="resealed", match="/resealed/{path:.+}", sse_customer_key=other, **cached
        ),
        _sealed_route(
            name="unsealed", match="/unsealed/{path:.+}", sse_customer_key=None, **cached
        ),
        _sealed_route(
            name="unsealed-auto",
            match="/unsealed-auto/{path:.+}",
            sse_customer_key=None,
            delivery="auto",
        ),
    ]
    faulty.sealed["/reports/exports/q4.pdf"] = _md5_base64(RAW_KEY)
    client = await proxy(data)
    alice = bearer(make_token())
    others = ["/resealed/q4.pdf", "/unsealed/q4.pdf", "/unsealed-auto/q4.pdf"]

    async def refused_everywhere() -> None:
        for path in others:
            for method in ("GET", "HEAD"):
                answer = await client.request(method, path, headers=alice, allow_redirects=False)
                body = await answer.read()
                assert answer.status == 502, (method, path, answer.status)
                assert s3.report not in body
                assert "ETag" not in answer.headers and "Last-Modified" not in answer.headers

    def asked() -> int:  # requests for the object (aiobotocore also probes the bucket)
        return sum(path.endswith(" /reports/exports/q4.pdf") for path in faulty.paths)

    await refused_everywhere()  # each alone: S3 says no
    alone = asked()
    sealed = await client.get("/sealed/q4.pdf", headers=alice)
    assert (sealed.status, await sealed.read()) == (200, s3.report)
    assert (await client.get("/sealed/q4.pdf", headers=alice)).status == 200
    assert asked() == alone + 1  # the second read came from the object cache
    await refused_everywhere()  # and still no, though the plaintext is in the proxy's memory
    assert asked() == alone + 1 + alone  # S3 was asked again, as often as the first time
