"""The one invariant of the proxy, driven by hypothesis through the whole gateway:

    a response body (or a presigned URL) is only ever an object that one of the credentials
    the caller presented was authorized for, under the route that authorized it.

Paths mix every route's prefix with traversal, encoding and segment tricks; requests carry
any mix of tokens from two issuers, garbage, and a share link, in any of the token sources.
The storage behind the seam answers *every* key with a body naming that key, so whatever the
proxy fetched shows in what it sent. The oracle below is written from the config by hand,
independently of the proxy's routing and rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.links import link_target, mint_link_token
from proxy.presign import Lifetime
from proxy.ssec import CustomerKey
from proxy.storage import ObjectMeta, ObjectStream

from .conftest import build_config, config_dict, make_token, raw_request
from .fakes import FakeStorage

CORP, PARTNER = "https://corp.example", "https://partner.example"
CORP_SECRET, PARTNER_SECRET, LINK_SECRET = "c" * 40, "p" * 40, "l" * 40
SHARED = "/admin/q4/shared.pdf"


def _config() -> dict[str, Any]:
    data = config_dict()
    data["auth"] = {
        "issuers": [
            {"name": "corp", "issuer": CORP, "algorithms": ["HS256"], "secret": CORP_SECRET},
            {
                "name": "partner",
                "issuer": PARTNER,
                "algorithms": ["HS256"],
                "secret": PARTNER_SECRET,
            },
        ],
        "link_secret": LINK_SECRET,
    }
    corp_only = {"issuers": ["corp"]}
    data["routes"] = [
        {
            "name": "mine",
            "match": "/me/{path:.+}",
            "bucket": "user-files",
            "key": "users/{claims.sub}/{path}",
            "delivery": "stream",
            "access": "authenticated",
            **corp_only,
        },
        {
            "name": "albums",
            "match": "/users/{user}/albums/{path:.+}",
            "bucket": "user-files",
            "key": "users/{user}/albums/{path}",
            "delivery": "stream",
            "access": {"claims": {"sub": "{user}"}},
            **corp_only,
        },
        {
            "name": "admin",
            "match": "/admin/{path:.+}",
            "bucket": "reports",
            "key": "exports/{path}",
            "delivery": "stream",
            "access": {"claims": {"role": "admin"}},
            **corp_only,
        },
        {
            "name": "partner-drop",
            "match": "/drop/{path:.+}",
            "bucket": "partner",
            "key": "in/{claims.sub}/{path}",
            "delivery": "redirect",
            "access": "authenticated",
            "issuers": ["partner"],
        },
        {
            "name": "public",
            "match": "/public/{id}",
            "bucket": "public",
            "key": "pub/{id}",
            "delivery": "stream",
            "access": "public",
        },
    ]
    return data


CONFIG = _config()
LINK = mint_link_token(LINK_SECRET, link_target(build_config(CONFIG), SHARED), 3600)


def _may_read(credential: str, bucket: str, key: str) -> bool:
    """The oracle: what each credential may read, written from the config above by hand."""
    segments = key.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return False
    if bucket == "public":
        return len(segments) == 2 and segments[0] == "pub"  # anyone, one segment
    if credential == "link":
        return (bucket, key) == ("reports", "exports/q4/shared.pdf")
    issuer, sub, role = CREDENTIALS[credential]
    if issuer == CORP and bucket == "user-files":
        return segments[:2] == ["users", sub] and len(segments) > 2
    if issuer == CORP and bucket == "reports":
        return role == "admin" and segments[0] == "exports"
    if issuer == PARTNER and bucket == "partner":
        return segments[:2] == ["in", sub] and len(segments) > 2
    return False


CREDENTIALS: dict[str, tuple[str, str, str | None]] = {
    "alice@corp": (CORP, "alice", None),
    "bob@corp": (CORP, "bob", None),
    "admin@corp": (CORP, "root", "admin"),
    "alice@partner": (PARTNER, "alice", None),
    "admin@partner": (PARTNER, "root", "admin"),
}


def _token(credential: str) -> str:
    issuer, sub, role = CREDENTIALS[credential]
    secret = CORP_SECRET if issuer == CORP else PARTNER_SECRET
    claims = {"iss": issuer, **({"role": role} if role else {})}
    return make_token(sub, key=secret, **claims)


class EveryKeyStorage(FakeStorage):
    """Holds every key: the body names the bucket and key it was read from."""

    async def head(self, bucket: str, key: str, sse: CustomerKey | None = None) -> ObjectMeta:
        self.calls.append(("head", bucket, key))
        return ObjectMeta(content_length=len(_body(bucket, key)), etag='"e"')

    async def get(
        self, bucket: str, key: str, byte_range: str | None, sse: CustomerKey | None = None
    ) -> ObjectStream:
        self.calls.append(("get", bucket, key))
        body = _body(bucket, key)
        return ObjectStream(
            meta=ObjectMeta(content_length=len(body), etag='"e"', content_type="text/plain"),
            chunks=self._chunks(body),
        )

    def presign(
        self,
        credentials: Any,
        method: str,
        bucket: str,
        key: str,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
    ) -> str:
        return f"https://s3.example/{bucket}/{quote(key, safe='/')}?X-Amz-Signature=x"


def _body(bucket: str, key: str) -> bytes:
    return f"{bucket}\n{key}".encode()


SEGMENTS = st.one_of(
    st.sampled_from(
        [
            *("alice", "bob", "root", "in", "users", "albums", "exports", "q4", "shared.pdf"),
            *("pub", "..", ".", "", "%2e%2e", "%2E.", "%2F", "alice%2F..", "a%2Fb", "%252F"),
            *("%00", "%5C", "..%2F..", "%2F%2F", ";", "%3B", "~", "%C0%AE", "\u00e9", "%FF"),
            "x" * 40,
        ]
    ),
    st.text(alphabet="ab./%2F5c", max_size=6),
)
PREFIXES = ["/me/", "/users/", "/users/alice/albums/", "/admin/", "/drop/", "/public/", "/"]


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, str], set[str]]:
    path = draw(st.sampled_from(PREFIXES)) + "/".join(draw(st.lists(SEGMENTS, max_size=5)))
    if draw(st.booleans()):
        path = SHARED if draw(st.booleans()) else path.replace("shared.pdf", "shared.pdf/")
    presented: set[str] = set()
    headers: dict[str, str] = {}
    query: list[str] = []
    for source in ("header", "cookie", "query"):
        choice = draw(st.sampled_from([None, "garbage", *CREDENTIALS]))
        if choice is None:
            continue
        token = "not.a.token" if choice == "garbage" else _token(choice)
        if choice != "garbage":
            presented.add(choice)
        if source == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif source == "cookie":
            headers["Cookie"] = f"access_token={token}"
        else:
            query.append(f"token={token}")
    if draw(st.booleans()):
        query.append(f"link={LINK}")
        presented.add("link")
    target = path + ("?" + "&".join(query) if query else "")
    return target, headers, presented


def _allowed(presented: set[str], bucket: str, key: str) -> bool:
    if bucket == "public":
        return _may_read("anyone", bucket, key)
    return any(_may_read(credential, bucket, key) for credential in presented)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests(), method=st.sampled_from(["GET", "HEAD"]))
async def test_only_authorized_objects_ever_leave(
    proxy, request: tuple[str, dict[str, str], set[str]], method: str
) -> None:
    target, headers, presented = request
    storage = EveryKeyStorage()
    client = await proxy(CONFIG, storage=storage)
    status, answer, body = await raw_request(client, target, headers, method=method)
    assert status < 500, (status, body)
    if status in (200, 206) and method == "GET":
        bucket, key = body.decode().split("\n", 1)
        assert _allowed(presented, bucket, key), (target, presented, bucket, key)
    if status == 302:
        location = urlsplit(answer["Location"])
        bucket, _, key = unquote(location.path).lstrip("/").partition("/")
        assert _allowed(presented, bucket, key), (target, presented, bucket, key)
    # nothing was even fetched for a caller who could not read it
    for operation, bucket, key in storage.calls:
        assert _allowed(presented, bucket, key), (operation, target, presented, bucket, key)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(requests(), min_size=1, max_size=4))
async def test_the_sign_api_signs_only_what_each_path_may_open(
    proxy, batch: list[tuple[str, dict[str, str], set[str]]]
) -> None:
    storage = EveryKeyStorage()
    client = await proxy(CONFIG, storage=storage)
    _, headers, presented = batch[0]
    presented = {c for c in presented if c != "link"}  # the sign API takes no share links
    paths = [target.split("?", 1)[0] for target, _, _ in batch]
    response = await client.post("/_sign", json={"paths": paths}, headers=headers)
    assert response.status < 500
    if response.status != 200:
        return
    for result in (await response.json())["results"]:
        url = result.get("url")
        if url is None or url.startswith("/"):
            continue  # refused, or a streamed path the caller fetches with its own token
        location = urlsplit(url)
        bucket, _, key = unquote(location.path).lstrip("/").partition("/")
        assert _allowed(presented, bucket, key), (result, presented)
