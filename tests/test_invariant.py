"""The one invariant of the proxy, driven by hypothesis through the whole gateway:

    a response body (or a presigned URL) is only ever an object that one of the credentials
    the caller presented was authorized for, under the route that authorized it, and read
    with that route's SSE-C customer key (or none), whatever other routes read before.

Paths mix every route's prefix with traversal, encoding and segment tricks; requests carry
any mix of tokens from two issuers, garbage, and a share link, in any of the token sources.
The storage behind the seam answers *every* key with a body naming that key and the customer
key it was read with, so whatever the proxy fetched shows in what it sent. Each example is a
short visit of several requests to one gateway, so its caches carry over from one request to
the next (the vault routes read one bucket with two customer keys and none, all cached). The
oracle below is written from the config by hand, independently of the proxy's routing and
rules.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.links import link_target, mint_link_token
from proxy.presign import Lifetime
from proxy.request import ObjectRef
from proxy.storage import ObjectMeta, ObjectStream

from .conftest import build_config, config_dict, make_token, raw_request
from .fakes import FakeStorage

CORP, PARTNER = "https://corp.example", "https://partner.example"
CORP_SECRET, PARTNER_SECRET, LINK_SECRET = "c" * 40, "p" * 40, "l" * 40
SHARED = "/admin/q4/shared.pdf"
# One bucket read through three routes: with customer key A, with key B, and with none.
VAULT_KEYS = {"/vault-a/": b"A" * 32, "/vault-b/": b"B" * 32, "/vault-plain/": None}


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
    for prefix, customer_key in VAULT_KEYS.items():
        sealed = (
            {"sse_customer_key": base64.b64encode(customer_key).decode()} if customer_key else {}
        )
        data["routes"].append(
            {
                "name": prefix.strip("/"),
                "match": prefix + "{path:.+}",
                "bucket": "vault",
                "key": "files/{path}",
                "delivery": "stream",
                "access": "authenticated",
                "cache": {"max_age": 600},
                **corp_only,
                **sealed,
            }
        )
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
    if issuer == CORP and bucket == "vault":
        return segments[0] == "files" and len(segments) > 1
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

    async def head(self, ref: ObjectRef) -> ObjectMeta:
        self.calls.append(("head", ref.bucket, ref.key))
        return ObjectMeta(content_length=len(_body(ref)), etag='"e"')

    async def get(self, ref: ObjectRef, byte_range: str | None) -> ObjectStream:
        self.calls.append(("get", ref.bucket, ref.key))
        body = _body(ref)
        return ObjectStream(
            meta=ObjectMeta(content_length=len(body), etag='"e"', content_type="text/plain"),
            chunks=self._chunks(body),
        )

    def presign(
        self,
        credentials: Any,
        method: str,
        ref: ObjectRef,
        lifetime: Lifetime,
        overrides: Mapping[str, str] | None = None,
        request_id: str | None = None,
    ) -> str:
        return f"https://s3.example/{ref.bucket}/{quote(ref.key, safe='/')}?X-Amz-Signature=x"


def _body(ref: ObjectRef) -> bytes:
    return f"{ref.bucket}\n{ref.key}\n{_sealed_with(ref.sse.key if ref.sse else None)}".encode()


def _sealed_with(customer_key: bytes | None) -> str:
    return customer_key[:1].decode() if customer_key else "-"


def _read_with(target: str) -> str:
    """The customer key the route a path names reads with, by its prefix (the oracle)."""
    for prefix, customer_key in VAULT_KEYS.items():
        if target.startswith(prefix):
            return _sealed_with(customer_key)
    return "-"


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
PREFIXES = [
    *("/me/", "/users/", "/users/alice/albums/", "/admin/", "/drop/", "/public/", "/"),
    *VAULT_KEYS,
]


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


@st.composite
def visits(draw: st.DrawFn) -> list[tuple[str, dict[str, str], set[str]]]:
    """A few requests to one gateway; a later one often asks, as the caller before it, for the
    same object through another vault route (so it would meet what that one left in the
    caches)."""
    target, headers, presented = draw(requests())
    if draw(st.booleans()):
        # A plain object name through a vault route: most random paths are refused early.
        _, query_mark, query = target.partition("?")
        path = draw(st.sampled_from(list(VAULT_KEYS))) + draw(st.sampled_from(["q4.pdf", "a/b"]))
        target = path + query_mark + query
    visit = [(target, headers, presented)]
    for _ in range(draw(st.integers(0, 2))):
        before, before_headers, before_presented = visit[-1]
        came_from = next((prefix for prefix in VAULT_KEYS if before.startswith(prefix)), None)
        if came_from is not None and draw(st.booleans()):
            # The same caller, the same object, through another vault route.
            elsewhere = draw(st.sampled_from([p for p in VAULT_KEYS if p != came_from]))
            target = elsewhere + before.removeprefix(came_from)
            visit.append((target, before_headers, before_presented))
        else:
            visit.append(draw(requests()))
    return visit


def _allowed(presented: set[str], bucket: str, key: str) -> bool:
    if bucket == "public":
        return _may_read("anyone", bucket, key)
    return any(_may_read(credential, bucket, key) for credential in presented)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(visit=visits(), method=st.sampled_from(["GET", "HEAD"]))
async def test_only_authorized_objects_ever_leave(
    proxy, visit: list[tuple[str, dict[str, str], set[str]]], method: str
) -> None:
    storage = EveryKeyStorage()
    client = await proxy(CONFIG, storage=storage)
    for number, (target, headers, presented) in enumerate(visit):
        # HEADs leave nothing in the object cache: the last request of a visit is the one
        # that may be a HEAD, so GETs before it fill the caches.
        asked = method if number == len(visit) - 1 else "GET"
        seen = len(storage.calls)
        status, answer, body = await raw_request(client, target, headers, method=asked)
        assert status < 500, (status, body)
        if status in (200, 206) and asked == "GET":
            named, sealed_with = body.decode().rsplit("\n", 1)
            bucket, key = named.split("\n", 1)
            assert _allowed(presented, bucket, key), (target, presented, bucket, key)
            assert sealed_with == _read_with(target), (visit, target, sealed_with)
        if status == 302:
            location = urlsplit(answer["Location"])
            bucket, _, key = unquote(location.path).lstrip("/").partition("/")
            assert _allowed(presented, bucket, key), (target, presented, bucket, key)
        # nothing was even fetched for a caller who could not read it
        for operation, bucket, key in storage.calls[seen:]:
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
