"""The audit trail through a real proxy (`python -m proxy serve` against moto): a stream whole
and cut short, a redirect, a sign API batch, uploads, refusals and revocations each leave the
event that says who got what; the request id joins the answer's header, the access line, the
audit events and the presigned URL; `audit verify` passes, and fails at an edited line."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from .cfkeys import DOMAIN, cloudfront_config, private_pem, rsa_key, write_key
from .conftest import S3Objects, bearer, config_dict, make_token
from .running import REPO, RunningProxy, running_proxy
from .test_multipart_http import ROUTE as MULTIPART_ROUTE
from .test_trusted_proxies import INGRESS, _from
from .test_uploads import fresh

ALICE = make_token("alice", ttl=600)
ROOT = make_token("root", ttl=600, role="admin")
UPLOADS = {
    "name": "uploads",
    "match": "/up/{path:.+}",
    "bucket": "user-files",
    "key": "users/{claims.sub}/up/{path}",
    "delivery": "stream",
    "access": "authenticated",
    "methods": ["GET", "HEAD", "PUT"],
    "upload": {"max_bytes": 1000, "content_types": ["text/plain"]},
}
DIRECT_UPLOADS = {
    **UPLOADS,
    "name": "direct-uploads",
    "match": "/direct/{path:.+}",
    "delivery": "redirect",
    "methods": ["GET", "PUT", "POST"],
}


def _config(s3: S3Objects, audit: Path, **listen: Any) -> dict[str, Any]:
    data = config_dict(
        s3.endpoint,
        admin={"access": {"claims": {"role": "admin"}}},
        audit={"path": str(audit)},
        listen=listen,
    )
    data["routes"] += [UPLOADS, DIRECT_UPLOADS]
    return data


def _request(
    proxy: RunningProxy,
    method: str,
    path: str,
    token: str | None = ALICE,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _hang_up_after_the_first_bytes(proxy: RunningProxy, path: str, token: str) -> str:
    """GET a large object, read a little of its body, and close the connection."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=20)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        assert response.status == 200
        assert len(response.read(64 * 1024)) == 64 * 1024
        return str(response.getheader("X-Request-Id"))
    finally:
        conn.close()


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _until(path: Path, found: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The file's events once `found` holds (bounded polling: a process offers no event to
    await; streamed answers are recorded when their stream ends, after the client has read)."""
    deadline = time.monotonic() + 20
    while not found(events := _events(path)):
        assert time.monotonic() < deadline, f"not found in:\n{json.dumps(events, indent=1)}"
        time.sleep(0.05)
    return events


def _of(events: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [event for event in events if event["request_id"] == request_id]


def _verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )


def test_who_got_what_through_a_real_proxy(s3: S3Objects, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with running_proxy(_config(s3, audit), tmp_path) as proxy:
        ids: dict[str, str] = {}

        # A stream, whole.
        status, headers, body = _request(proxy, "GET", "/stream/photos/42")
        assert (status, body) == (200, s3.photo)
        ids["stream"] = headers["X-Request-Id"]

        # A stream cut short: the client hangs up after its first 64 KiB of 48 MiB.
        ids["cut"] = _hang_up_after_the_first_bytes(proxy, "/admin/exports/huge.bin", ROOT)

        # A redirect: the presigned URL carries the request id, signed.
        status, headers, _ = _request(proxy, "GET", "/photos/42")
        assert status == 302
        ids["redirect"] = headers["X-Request-Id"]
        query = parse_qs(urlsplit(headers["Location"]).query)
        assert query["x-request-id"] == [ids["redirect"]]
        # ...and S3 accepts the URL it is signed into.
        fetched = http.client.HTTPConnection(urlsplit(headers["Location"]).netloc, timeout=20)
        target = headers["Location"].split(urlsplit(headers["Location"]).netloc, 1)[1]
        fetched.request("GET", target)
        assert fetched.getresponse().read() == s3.photo
        fetched.close()

        # A stable URL is the same for everyone in its window: it carries no request id.
        status, headers, _ = _request(proxy, "GET", "/stable/photos/42")
        assert status == 302 and "x-request-id" not in headers["Location"]
        ids["stable"] = headers["X-Request-Id"]

        # A sign API batch: one URL signed, one stream path (nothing signed), one refused.
        batch = {"paths": ["/photos/42", "/stream/photos/42", "/admin/links/q4.pdf"]}
        status, headers, body = _request(
            proxy,
            "POST",
            "/_sign",
            body=json.dumps(batch).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 200
        ids["sign"] = headers["X-Request-Id"]
        signed = json.loads(body)["results"][0]["url"]
        assert parse_qs(urlsplit(signed).query)["x-request-id"] == [ids["sign"]]

        # Uploads: one stored through the proxy, one refused, one redirected to S3.
        status, headers, body = _request(
            proxy, "PUT", "/up/a.txt", body=b"hello", headers={"Content-Type": "text/plain"}
        )
        assert status == 201
        ids["upload"] = headers["X-Request-Id"]
        etag = json.loads(body)["etag"]
        status, headers, _ = _request(
            proxy, "PUT", "/up/b.png", body=b"\x89PNG", headers={"Content-Type": "image/png"}
        )
        assert status == 415
        ids["upload refused"] = headers["X-Request-Id"]
        status, headers, _ = _request(
            proxy, "PUT", "/direct/c.txt", body=b"hi", headers={"Content-Type": "text/plain"}
        )
        assert status == 307
        ids["direct upload"] = headers["X-Request-Id"]
        put_url = headers["Location"]
        assert parse_qs(urlsplit(put_url).query)["x-request-id"] == [ids["direct upload"]]

        # Refusals: no token, and a token the rule refuses.
        status, headers, _ = _request(proxy, "GET", "/stream/photos/42", token=None)
        assert status == 401
        ids["401"] = headers["X-Request-Id"]
        status, headers, _ = _request(proxy, "GET", "/admin/exports/q4.pdf")
        assert status == 403
        ids["403"] = headers["X-Request-Id"]

        # A revocation, and its undoing, through the admin endpoint.
        status, headers, _ = _request(
            proxy,
            "POST",
            "/_admin/revocations",
            token=ROOT,
            body=b'{"sub": "mallory"}',
            headers={"Content-Type": "application/json"},
        )
        assert status == 201
        ids["revoke"] = headers["X-Request-Id"]
        status, headers, _ = _request(
            proxy, "DELETE", "/_admin/revocations?sub=mallory", token=ROOT
        )
        assert status == 200
        ids["unrevoke"] = headers["X-Request-Id"]

        # A client's own X-Request-Id is not taken: it is no trusted proxy.
        status, headers, _ = _request(
            proxy, "GET", "/stream/photos/42", headers={"X-Request-Id": "chosen-by-me"}
        )
        assert headers["X-Request-Id"] != "chosen-by-me"

        _until(audit, lambda found: bool(_of(found, ids["cut"])))
    # Read once it has stopped: every event is in, and the access lines (written in batches).
    events, output = _events(audit), proxy.output

    # Each answer's id is its own, and names its access line.
    assert len(set(ids.values())) == len(ids)
    access = [json.loads(line) for line in output.splitlines() if '"duration_ms"' in line]
    logged = {line["request_id"] for line in access}
    assert set(ids.values()) <= logged

    (whole,) = _of(events, ids["stream"])
    assert whole["event"] == "object.streamed"
    assert list(whole)[:9] == [
        "time",
        "event",
        "request_id",
        "sub",
        "iss",
        "client",
        "route",
        "method",
        "status",
    ]
    assert (whole["sub"], whole["client"], whole["route"], whole["method"]) == (
        "alice",
        "127.0.0.1",
        "photo-stream",
        "GET",
    )
    assert (whole["status"], whole["bucket"], whole["key"], whole["delivery"]) == (
        200,
        "hr-private",
        "employees/42/photo.jpg",
        "stream",
    )
    assert (whole["bytes"], whole["complete"]) == (len(s3.photo), True)

    (cut,) = _of(events, ids["cut"])
    assert (cut["event"], cut["sub"], cut["key"], cut["complete"]) == (
        "object.streamed",
        "root",
        "exports/huge.bin",
        False,
    )
    assert 64 * 1024 <= cut["bytes"] < 48 * 1024 * 1024

    (redirected,) = _of(events, ids["redirect"])
    assert redirected["event"] == "url.signed"
    assert (redirected["status"], redirected["delivery"], redirected["url_method"]) == (
        302,
        "redirect",
        "GET",
    )
    assert redirected["key"] == "employees/42/photo.jpg"
    assert redirected["expires"].endswith("Z") and "stable" not in redirected
    (stable,) = _of(events, ids["stable"])
    assert stable["stable"] is True and stable["signed_at"] < stable["expires"]

    signed, denied = _of(events, ids["sign"])
    assert (signed["event"], signed["route"], signed["delivery"]) == (
        "url.signed",
        "employee-photos",
        "sign",
    )
    assert (signed["bucket"], signed["key"], signed["status"]) == (
        "hr-private",
        "employees/42/photo.jpg",
        200,
    )
    assert (denied["event"], denied["path"], denied["status"], denied["reason"]) == (
        "access.denied",
        "/admin/links/q4.pdf",
        403,
        "claim 'role' missing",
    )
    assert denied["route"] == "sign-api"  # refused before it was an object of a route

    (uploaded,) = _of(events, ids["upload"])
    assert (uploaded["event"], uploaded["status"], uploaded["bytes"], uploaded["etag"]) == (
        "object.uploaded",
        201,
        5,
        etag,
    )
    assert (uploaded["bucket"], uploaded["key"]) == ("user-files", "users/alice/up/a.txt")
    (refused,) = _of(events, ids["upload refused"])
    assert (refused["event"], refused["status"], refused["key"]) == (
        "upload.refused",
        415,
        "users/alice/up/b.png",
    )
    assert refused["reason"] == "upload type image/png not allowed"
    (direct,) = _of(events, ids["direct upload"])
    assert (direct["event"], direct["status"], direct["url_method"], direct["bytes"]) == (
        "url.signed",
        307,
        "PUT",
        2,
    )

    (no_token,) = _of(events, ids["401"])
    assert (no_token["event"], no_token["reason"], no_token["sub"]) == (
        "access.denied",
        "no token",
        None,
    )
    (wrong_role,) = _of(events, ids["403"])
    assert (wrong_role["event"], wrong_role["sub"], wrong_role["reason"]) == (
        "access.denied",
        "alice",
        "claim 'role' missing",
    )

    (added,) = _of(events, ids["revoke"])
    assert (added["event"], added["what"], added["by"], added["sub"]) == (
        "revocation.added",
        {"sub": "mallory", "iss": None},
        "admin endpoint",
        "root",
    )
    (removed,) = _of(events, ids["unrevoke"])
    assert (removed["event"], removed["what"]) == (
        "revocation.removed",
        {"sub": "mallory", "iss": None},
    )

    # Never a token, a cookie or a signature.
    text = audit.read_text()
    for secret in (ALICE, ROOT, "X-Amz-Signature", "X-Amz-Credential", "Bearer", "eyJ"):
        assert secret not in text

    # The chain holds; an edited line breaks it at that line.
    verified = _verify(audit)
    assert verified.returncode == 0, verified.stderr
    assert f"{len(events)} events, chain intact" in verified.stdout
    lines = audit.read_bytes().splitlines(keepends=True)
    number = next(i for i, e in enumerate(events, start=1) if e["request_id"] == ids["403"])
    lines[number - 1] = lines[number - 1].replace(b'"sub":"alice"', b'"sub":"bob"')
    audit.write_bytes(b"".join(lines))
    broken = _verify(audit)
    assert broken.returncode == 1
    assert f"audit chain broken at {audit}:{number}: " in broken.stderr


def test_sighup_follows_a_file_logrotate_moved(s3: S3Objects, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with running_proxy(_config(s3, audit), tmp_path) as proxy:
        assert _request(proxy, "GET", "/photos/42")[0] == 302
        _until(audit, lambda found: len(found) == 1)
        moved = tmp_path / "audit.jsonl.1"
        os.rename(audit, moved)
        proxy.signal(signal.SIGHUP)
        proxy.wait_for("config reloaded")
        _, headers, _ = _request(proxy, "GET", "/photos/42")
        rotated, event = _until(audit, lambda found: len(found) == 2)
    assert (rotated["event"], rotated["previous"]) == ("audit.rotated", None)
    assert rotated["prev"] == _events(moved)[-1]["hash"]
    assert event["request_id"] == headers["X-Request-Id"]
    verified = _verify(moved, audit)
    assert verified.returncode == 0, verified.stderr


def test_verify_catches_the_first_lines_of_a_file_removed(s3: S3Objects, tmp_path: Path) -> None:
    """A file's first line starts a chain (prev null) or is the `audit.rotated` line that
    continues another: cutting lines off the top (the oldest downloads), or the rotation
    line of the file after a logrotate, must not verify as "continues a chain from before"."""
    audit = tmp_path / "audit.jsonl"
    with running_proxy(_config(s3, audit), tmp_path) as proxy:
        for _ in range(3):
            assert _request(proxy, "GET", "/photos/42")[0] == 302
        _until(audit, lambda found: len(found) == 3)
        moved = tmp_path / "audit.jsonl.1"
        os.rename(audit, moved)
        proxy.signal(signal.SIGHUP)
        proxy.wait_for("config reloaded")
        for _ in range(2):
            assert _request(proxy, "GET", "/photos/42")[0] == 302
        _until(audit, lambda found: len(found) == 3)
    assert _verify(moved, audit).returncode == 0
    for path in (moved, audit):
        whole = path.read_bytes()
        path.write_bytes(whole.split(b"\n", 1)[1])  # its first line removed
        broken = _verify(moved, audit)
        assert broken.returncode == 1, broken.stdout
        assert f"audit chain broken at {path}:1: " in broken.stderr
        path.write_bytes(whole)


def test_each_worker_writes_a_chain_of_its_own(s3: S3Objects, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    with running_proxy(_config(s3, audit, workers=2), tmp_path) as proxy:
        answered = {_request(proxy, "GET", "/photos/42")[1]["X-Request-Id"] for _ in range(12)}
        files = [tmp_path / "audit.w0.jsonl", tmp_path / "audit.w1.jsonl"]
        found = _until(files[0], lambda _: sum(len(_events(f)) for f in files) == len(answered))
        del found
    assert not audit.exists()
    recorded = {event["request_id"] for f in files for event in _events(f)}
    assert recorded == answered
    verified = _verify(*files)
    assert verified.returncode == 0, verified.stderr


def test_a_second_server_on_the_same_audit_file_refuses_to_start(
    s3: S3Objects, tmp_path: Path
) -> None:
    """Two writers would fork the file's chain (two replicas on one machine given one path)."""
    audit = tmp_path / "audit.jsonl"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    with (
        running_proxy(_config(s3, audit), first),
        pytest.raises(AssertionError, match="proxy exited"),
        running_proxy(_config(s3, audit), second),
    ):
        pass
    assert "is being written by another process" in (second / "proxy.out").read_text()


# --- the methods and steps that arrived later: CloudFront, presigned multipart -----------------


async def test_cloudfront_urls_and_cookies_are_signed_events(proxy: Any, tmp_path: Path) -> None:
    key_file = write_key(tmp_path, "cf.pem", private_pem(rsa_key()))
    audit = tmp_path / "audit.jsonl"
    data = {**cloudfront_config(key_file), "audit": {"path": str(audit)}}
    client = await proxy(data)
    url = await client.get("/cdn/photos/42", headers=bearer(ALICE), allow_redirects=False)
    cookies = await client.get(
        "/cdn/albums/trip/1.jpg", headers=bearer(ALICE), allow_redirects=False
    )
    assert (url.status, cookies.status) == (302, 302)
    signed_url, signed_cookies = _events(audit)
    assert signed_url["request_id"] == url.headers["X-Request-Id"]
    assert (signed_url["event"], signed_url["delivery"], signed_url["stable"]) == (
        "url.signed",
        "cloudfront",
        True,
    )
    assert (signed_cookies["key"], signed_cookies["cookie_scope"]) == (
        "albums/trip/1.jpg",
        f"https://{DOMAIN}/albums/trip/*",
    )
    text = audit.read_text()
    assert "Signature" not in text and "CloudFront-" not in text  # never a signature


async def test_multipart_part_urls_and_completion_are_events(
    proxy: Any, s3: S3Objects, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    data = config_dict(s3.endpoint, audit={"path": str(audit)})
    data["routes"].insert(0, MULTIPART_ROUTE)
    client = await proxy(data)
    path = f"/big/{fresh('clip.bin')}"
    begin = {"path": path, "content_type": "application/octet-stream", "size": 10}
    answer = await client.post("/_sign", json={"multipart": [begin]}, headers=bearer(ALICE))
    (begun,) = (await answer.json())["multipart"]
    async with aiohttp.ClientSession() as session:
        part = begun["parts"][0]["url"]
        async with session.put(part, data=b"0123456789") as put:
            assert put.status == 200
            etag = put.headers["ETag"]
    parts = [{"number": 1, "etag": etag}]
    complete = {"path": path, "upload_id": begun["upload_id"], "parts": parts}
    done = await client.post("/_sign", json={"complete": [complete]}, headers=bearer(ALICE))
    assert (await done.json())["complete"][0]["status"] == 201
    signed, uploaded = _events(audit)
    assert (signed["event"], signed["step"], signed["upload_id"], signed["parts"]) == (
        "url.signed",
        "multipart",
        begun["upload_id"],
        1,
    )
    assert (signed["route"], signed["url_method"], signed["path"]) == ("big-files", "PUT", path)
    assert (uploaded["event"], uploaded["step"], uploaded["bytes"], uploaded["status"]) == (
        "object.uploaded",
        "complete",
        10,
        201,
    )
    assert uploaded["key"] == f"big/alice/{path.removeprefix('/big/')}"
    assert uploaded["request_id"] == done.headers["X-Request-Id"]


async def test_a_trusted_proxys_request_id_is_kept_and_anyone_elses_is_not(
    proxy: Any, s3: S3Objects, tmp_path: Path
) -> None:
    """One id through the ingress and the proxy; a direct client cannot pick the id its
    events are filed under, nor one that would break a header, a log line or a URL."""
    audit = tmp_path / "audit.jsonl"
    listen = {"trusted_proxies": [f"{INGRESS}/32"]}
    client = await proxy(config_dict(s3.endpoint, listen=listen, audit={"path": str(audit)}))
    url = str(client.make_url("/photos/42"))
    given = {**bearer(ALICE), "X-Forwarded-For": "203.0.113.7", "X-Request-Id": "ingress-42.a:b"}
    async with (
        _from(INGRESS) as ingress,
        ingress.get(url, headers=given, allow_redirects=False) as kept,
    ):
        assert kept.headers["X-Request-Id"] == "ingress-42.a:b"
        assert parse_qs(urlsplit(kept.headers["Location"]).query)["x-request-id"] == [
            "ingress-42.a:b"
        ]
    hostile = {**given, "X-Request-Id": "x&X-Amz-Signature=0"}
    async with (
        _from(INGRESS) as ingress,
        ingress.get(url, headers=hostile, allow_redirects=False) as replaced,
    ):
        assert replaced.headers["X-Request-Id"] != "x&X-Amz-Signature=0"
    async with (
        _from("127.0.0.2") as direct,
        direct.get(url, headers=given, allow_redirects=False) as own,
    ):
        assert own.headers["X-Request-Id"] != "ingress-42.a:b"
    first, second, third = _events(audit)
    assert (first["request_id"], first["client"]) == ("ingress-42.a:b", "203.0.113.7")
    assert second["request_id"] == replaced.headers["X-Request-Id"]
    assert (third["request_id"], third["client"]) == (own.headers["X-Request-Id"], "127.0.0.2")
