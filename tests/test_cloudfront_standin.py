"""The loopback STAND-IN for a CloudFront edge (proxy/demo/cloudfront_standin.py; not a CDN):
it verifies signed URLs and cookies with the public key as CloudFront documents, then serves
from the demo's kind of S3 (moto here) with an edge cache."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from proxy.cloudfront import Signer, SigningKey, VerifyingKey, object_path
from proxy.demo.cloudfront_standin import EdgeOrigin, StandInEdge

from .cfkeys import KEY_ID, OTHER_ID, ec_key, rsa_key
from .conftest import Clock, S3Objects

ALBUM = {f"albums/standin/{n}.jpg": f"picture {n}".encode() for n in range(1, 4)}


@pytest.fixture(scope="module")
def album(s3: S3Objects) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for key, body in ALBUM.items():
        client.put_object(Bucket="hr-private", Key=key, Body=body, ContentType="image/jpeg")
    return ALBUM


class Edge:
    def __init__(self, server: TestServer, edge: StandInEdge, signer: Signer, clock: Clock):
        self.server, self.edge, self.signer, self.clock = server, edge, signer, clock
        self.origin = signer.origin

    def url(self, key: str) -> str:
        return self.origin + object_path(key)


@pytest.fixture
async def edge(aiohttp_server: Any, s3: S3Objects, album: dict[str, bytes]) -> Edge:
    clock = Clock(1_767_000_000)
    trusted = {
        KEY_ID: VerifyingKey(KEY_ID, rsa_key().public_key()),
        OTHER_ID: VerifyingKey(OTHER_ID, ec_key().public_key()),
    }
    stand_in = StandInEdge(trusted, EdgeOrigin(s3.endpoint, "hr-private"), clock)
    server = await aiohttp_server(stand_in.application())
    origin = f"http://127.0.0.1:{server.port}"
    return Edge(server, stand_in, Signer(origin, SigningKey(KEY_ID, rsa_key())), clock)


async def _get(edge: Edge, url: str, **kwargs: Any) -> tuple[int, CIMultiDict[str], bytes]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(url, allow_redirects=False, **kwargs) as answer,
    ):
        return answer.status, CIMultiDict(answer.headers), await answer.read()


async def test_a_signed_url_is_served_from_s3_then_from_the_edge_cache(
    edge: Edge, s3: S3Objects
) -> None:
    url = edge.signer.signed_url(edge.url("employees/42/photo.jpg"), int(edge.clock.now) + 60)
    status, headers, body = await _get(edge, url)
    assert (status, body) == (200, s3.photo)
    assert headers["X-Cache"] == "Miss from cloudfront"
    assert headers["Content-Type"] == "image/jpeg"
    status, headers, body = await _get(edge, url)
    assert (status, headers["X-Cache"], body) == (200, "Hit from cloudfront", s3.photo)
    assert edge.edge.counts["misses"] == 1
    status, headers, _ = await _get(edge, url, headers={"If-None-Match": headers["ETag"]})
    assert status == 304


async def test_an_expired_url_is_cloudfronts_access_denied(edge: Edge) -> None:
    url = edge.signer.signed_url(edge.url("employees/42/photo.jpg"), int(edge.clock.now) + 60)
    edge.clock.now += 60
    status, headers, body = await _get(edge, url)
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body
    assert headers["X-Stand-In-Reason"].startswith("expired:")


async def test_a_url_signed_for_one_object_opens_no_other(edge: Edge) -> None:
    url = edge.signer.signed_url(edge.url("albums/standin/1.jpg"), int(edge.clock.now) + 60)
    status, headers, _ = await _get(edge, url.replace("/1.jpg", "/2.jpg"))
    assert status == 403
    assert headers["X-Stand-In-Reason"].startswith("bad signature")


async def test_cookies_open_their_scope_and_nothing_else(edge: Edge) -> None:
    cookies = edge.signer.signed_cookies(
        edge.origin + "/albums/standin/*", int(edge.clock.now) + 60
    )
    header = "; ".join(f"{name}={value}" for name, value in cookies.values)
    for key, body in ALBUM.items():
        status, _, got = await _get(edge, edge.url(key), headers={"Cookie": header})
        assert (status, got) == (200, body)
    status, headers, _ = await _get(
        edge, edge.url("employees/42/photo.jpg"), headers={"Cookie": header}
    )
    assert status == 403
    assert headers["X-Stand-In-Reason"].startswith("wildcard scope")


async def test_an_unsigned_request_is_missing_key(edge: Edge) -> None:
    status, _, body = await _get(edge, edge.url("albums/standin/1.jpg"))
    assert status == 403
    assert b"<Code>MissingKey</Code>" in body


async def test_a_key_outside_the_trusted_group_is_refused(edge: Edge) -> None:
    stranger = Signer(edge.origin, SigningKey("KSTRANGER0001", rsa_key(2048, 5)))
    url = stranger.signed_url(edge.url("albums/standin/1.jpg"), int(edge.clock.now) + 60)
    status, headers, _ = await _get(edge, url)
    assert status == 403
    assert headers["X-Stand-In-Reason"].startswith("wrong key id: KSTRANGER0001")


async def test_an_ecdsa_key_of_the_group_is_accepted(edge: Edge) -> None:
    signer = Signer(edge.origin, SigningKey(OTHER_ID, ec_key()))
    url = signer.signed_url(edge.url("albums/standin/3.jpg"), int(edge.clock.now) + 60)
    status, _, body = await _get(edge, url)
    assert (status, body) == (200, ALBUM["albums/standin/3.jpg"])


async def test_a_missing_object_is_s3s_answer(edge: Edge) -> None:
    url = edge.signer.signed_url(edge.url("albums/standin/none.jpg"), int(edge.clock.now) + 60)
    status, _, _ = await _get(edge, url)
    assert status == 404


async def test_only_reads_are_taken(edge: Edge) -> None:
    import aiohttp

    url = edge.signer.signed_url(edge.url("albums/standin/1.jpg"), int(edge.clock.now) + 60)
    async with aiohttp.ClientSession() as session, session.put(url, data=b"x") as answer:
        assert answer.status == 403
