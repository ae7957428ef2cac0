"""Revocation with the memory backend: by subject, by jti, share links, the admin endpoint's
access rule and refusals, expiry, and the CLI talking to a running server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli import main
from proxy.config import ConfigError
from proxy.links import LinkTarget, mint_link_token
from proxy.state import Revocation, RevocationList, new_revocation

from .conftest import (
    HUGE_SIZE,
    SECRET,
    Clock,
    S3Objects,
    bearer,
    build_config,
    config_dict,
    make_token,
)

REPO = Path(__file__).resolve().parent.parent
LINK_SECRET = "link-secret-" + "y" * 40
T0 = 1_700_000_000.0
ADMIN = make_token("root", role="admin", now=T0)  # for tests on Clock(T0)
ADMIN_NOW = make_token("root", role="admin")  # for tests on the real clock
REVOKED = 'Bearer error="invalid_token", error_description="token revoked"'


def _config(s3: S3Objects, **sections: Any) -> dict[str, Any]:
    data = config_dict(s3.endpoint, admin={"access": {"claims": {"role": "admin"}}}, **sections)
    data["auth"]["link_secret"] = LINK_SECRET
    return data


async def _revoke(client: Any, body: dict[str, Any], token: str = ADMIN) -> Any:
    return await client.post("/_admin/revocations", json=body, headers=bearer(token))


async def test_a_revoked_subject_is_refused_on_stream_and_redirect_a_fresh_sign_in_works(
    proxy, s3: S3Objects
) -> None:
    clock = Clock(T0)
    client = await proxy(_config(s3), clock=clock)
    old = make_token("alice", now=clock.now - 10)
    # Verified once, so it sits in the verified-token cache when revoked.
    assert (await client.get("/stream/photos/42", headers=bearer(old))).status == 200
    response = await _revoke(client, {"sub": "alice"})
    assert response.status == 201
    entry = (await response.json())["revocation"]
    assert entry["sub"] == "alice" and entry["iss"] is None
    # Lasts as long as a token issued just now can live: max_token_lifetime plus leeway.
    assert entry["expires_at"] == T0 + 86400 + 30

    for path in ("/stream/photos/42", "/photos/42"):
        refused = await client.get(path, headers=bearer(old), allow_redirects=False)
        assert refused.status == 401, path
        assert refused.headers["WWW-Authenticate"] == REVOKED
    # Issued in the same second as the revocation: still covered ("at or before").
    same_second = make_token("alice", now=T0)
    assert (await client.get("/stream/photos/42", headers=bearer(same_second))).status == 401
    fresh = make_token("alice", now=T0 + 1)
    assert (await client.get("/stream/photos/42", headers=bearer(fresh))).status == 200
    redirect = await client.get("/photos/42", headers=bearer(fresh), allow_redirects=False)
    assert redirect.status == 302
    # Someone else is untouched.
    bob = make_token("bob", now=clock.now - 10)
    assert (await client.get("/stream/photos/42", headers=bearer(bob))).status == 200


async def test_a_revoked_token_never_comes_back_whatever_claims_it_lacks(
    proxy, s3: S3Objects
) -> None:
    """Issue 21 item 2: a revocation lasts max_token_lifetime (+ leeway); a token that could
    outlive it (no iat, or a lifetime past the bound by less than the leeway) must never be
    accepted once revoked, not even after the entry has expired."""
    import jwt

    clock = Clock(T0)
    client = await proxy(_config(s3, revocation={"max_token_lifetime": 60}), clock=clock)
    week = int(T0) + 7 * 86400
    no_iat = jwt.encode({"sub": "alice", "exp": week}, SECRET, algorithm="HS256")
    # Issued before the revocation, living the bound plus the leeway.
    stretched = make_token("alice", now=T0 - 1, ttl=60 + 30)
    fine = make_token("alice", now=T0 - 1, ttl=60)
    assert (await client.get("/stream/photos/42", headers=bearer(fine))).status == 200
    admin = make_token("root", role="admin", now=T0, ttl=60)
    assert (await _revoke(client, {"sub": "alice"}, admin)).status == 201
    for token in (no_iat, stretched, fine):
        assert (await client.get("/stream/photos/42", headers=bearer(token))).status == 401

    clock.now = T0 + 60 + 30 + 1  # the entry has expired
    admin = make_token("root", role="admin", now=clock.now, ttl=60)
    listed = await client.get("/_admin/revocations", headers=bearer(admin))
    assert (await listed.json())["revocations"] == []
    for token in (no_iat, stretched, fine):
        refused = await client.get("/stream/photos/42", headers=bearer(token))
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    fresh = make_token("alice", now=clock.now, ttl=60)
    assert (await client.get("/stream/photos/42", headers=bearer(fresh))).status == 200


async def test_a_revoked_jti_outlives_a_token_from_an_issuer_clock_ahead_of_ours(
    proxy, s3: S3Objects
) -> None:
    clock = Clock(T0)
    lifetime = 700_000  # longer than a share link, so the token's lifetime decides
    client = await proxy(_config(s3, revocation={"max_token_lifetime": lifetime}), clock=clock)
    # Minted before the revocation by an issuer whose clock runs 30 s (the leeway) ahead.
    ahead = make_token("alice", now=T0 + 30, ttl=lifetime, jti="laptop")
    assert (await client.get("/stream/photos/42", headers=bearer(ahead))).status == 200
    admin = make_token("root", role="admin", now=T0, ttl=60)
    assert (await _revoke(client, {"jti": "laptop"}, admin)).status == 201
    clock.now = T0 + lifetime + 31  # past what the entry used to last, within the token's life
    assert (await client.get("/stream/photos/42", headers=bearer(ahead))).status == 401


async def test_a_token_without_iat_or_exp_is_refused(proxy, s3: S3Objects) -> None:
    import jwt

    clock = Clock(T0)
    client = await proxy(_config(s3), clock=clock)
    no_iat = jwt.encode({"sub": "alice", "exp": int(T0) + 600}, SECRET, algorithm="HS256")
    no_exp = jwt.encode({"sub": "alice", "iat": int(T0)}, SECRET, algorithm="HS256")
    for token in (no_iat, no_exp):
        refused = await client.get("/stream/photos/42", headers=bearer(token))
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


class Download:
    """A GET of a large object over a raw socket, read by a slow client: it takes 1 MiB and
    then reads nothing until told to, so the proxy is still sending when the test acts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = 0

    @classmethod
    async def start(cls, host: str, port: int, target: str, token: str | None) -> Download:
        reader, writer = await asyncio.open_connection(host, port)
        lines = [f"GET {target} HTTP/1.1", "Host: proxy", "Connection: close"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        download = cls(reader, writer)
        download.received = len(await reader.readexactly(1024 * 1024))
        return download

    async def read_to_end(self) -> int:
        """Read as fast as the proxy sends, until it closes; the bytes of body received."""
        async with asyncio.timeout(60):
            while chunk := await self.reader.read(1024 * 1024):
                self.received += len(chunk)
        self.writer.close()
        return self.received


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "proxy.access"]


async def test_a_revocation_stops_a_stream_in_flight(
    proxy, s3: S3Objects, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21 item 8: revoking a subject stops what it is already downloading."""
    caplog.set_level(logging.INFO, logger="proxy.access")
    metrics = {"enabled": True, "listen": "main", "access": "public"}
    client = await proxy(_config(s3, metrics=metrics))
    server = client.server
    token = make_token("alice", role="admin")
    bob = await Download.start(server.host, server.port, "/admin/exports/huge.bin", ADMIN_NOW)
    alice = await Download.start(server.host, server.port, "/admin/exports/huge.bin", token)
    assert (await _revoke(client, {"sub": "alice"}, ADMIN_NOW)).status == 201
    assert await alice.read_to_end() < HUGE_SIZE  # cut short, not finished
    assert await bob.read_to_end() == HUGE_SIZE  # someone else's stream runs on

    cut = [line for line in _access_lines(caplog) if line["sub"] == "alice"]
    assert [(line["status"], line["reason"]) for line in cut] == [
        (200, "credential revoked mid-stream")
    ]
    text = await (await client.get("/metrics")).text()
    assert 'proxy_streams_stopped_total{reason="revoked"} 1.0' in text


async def test_a_revoked_share_link_stops_its_stream(proxy, s3: S3Objects) -> None:
    import jwt

    client = await proxy(_config(s3))
    target = LinkTarget("admin-exports", "reports", "exports/huge.bin")
    link = mint_link_token(LINK_SECRET, target, 600)
    path = f"/admin/exports/huge.bin?link={link}"
    download = await Download.start(client.server.host, client.server.port, path, None)
    jti = jwt.decode(link, options={"verify_signature": False})["jti"]
    assert (await _revoke(client, {"jti": jti}, ADMIN_NOW)).status == 201
    assert await download.read_to_end() < HUGE_SIZE


async def test_the_sign_api_refuses_a_revoked_token(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(_config(s3), clock=clock)
    old = make_token("alice", now=clock.now - 10)
    await _revoke(client, {"sub": "alice"})
    response = await client.post("/_sign", json={"paths": ["/photos/42"]}, headers=bearer(old))
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == REVOKED


async def test_revoking_one_jti_leaves_the_subjects_other_tokens(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(_config(s3), clock=clock)
    lost = make_token("alice", now=clock.now - 10, jti="lost-laptop")
    other = make_token("alice", now=clock.now - 10, jti="phone")
    assert (await _revoke(client, {"jti": "lost-laptop"})).status == 201
    assert (await client.get("/stream/photos/42", headers=bearer(lost))).status == 401
    assert (await client.get("/stream/photos/42", headers=bearer(other))).status == 200


async def test_a_share_link_is_revoked_by_its_jti(proxy, s3: S3Objects) -> None:
    import jwt

    clock = Clock(T0)
    client = await proxy(_config(s3), clock=clock)
    target = LinkTarget("admin-exports", "reports", "exports/q4.pdf")
    link = mint_link_token(LINK_SECRET, target, 600, now=clock.now)
    other = mint_link_token(LINK_SECRET, target, 600, now=clock.now)
    jti = jwt.decode(link, options={"verify_signature": False})["jti"]
    assert jti != jwt.decode(other, options={"verify_signature": False})["jti"]
    assert (await client.get(f"/admin/exports/q4.pdf?link={link}")).status == 200
    await _revoke(client, {"jti": jti})
    refused = await client.get(f"/admin/exports/q4.pdf?link={link}")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == REVOKED
    assert await refused.json() == {"error": "token revoked"}  # the body says what the header does
    assert (await client.get(f"/admin/exports/q4.pdf?link={other}")).status == 200


async def test_a_token_living_longer_than_revocations_last_is_refused(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(_config(s3, revocation={"max_token_lifetime": 3600}), clock=clock)
    ok = make_token("alice", now=clock.now, ttl=3600)
    # exp and iat are both the issuer's stamps: no leeway for clock skew between them.
    too_long = make_token("alice", now=clock.now, ttl=3600 + 1)
    assert (await client.get("/stream/photos/42", headers=bearer(ok))).status == 200
    response = await client.get("/stream/photos/42", headers=bearer(too_long))
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_entries_expire_list_and_undo(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(_config(s3), clock=clock)
    await _revoke(client, {"sub": "alice", "iss": "https://idp.example", "ttl": 60})
    await _revoke(client, {"jti": "j1"})
    listed = await client.get("/_admin/revocations", headers=bearer(ADMIN))
    assert listed.status == 200
    entries = (await listed.json())["revocations"]
    assert [e.get("sub") or e.get("jti") for e in entries] == ["alice", "j1"]
    assert entries[0]["expires_at"] == T0 + 60

    clock.now += 61
    listed = await client.get("/_admin/revocations", headers=bearer(ADMIN))
    assert [e.get("jti") for e in (await listed.json())["revocations"]] == ["j1"]

    undone = await client.delete("/_admin/revocations?jti=j1", headers=bearer(ADMIN))
    assert undone.status == 200
    again = await client.delete("/_admin/revocations?jti=j1", headers=bearer(ADMIN))
    assert again.status == 404


@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"sub": "alice"}, "/_admin/revocations?sub=alice"),
        (
            {"sub": "a&b=c", "iss": "https://idp.example/x?y"},
            "/_admin/revocations?sub=a%26b%3Dc&iss=https%3A%2F%2Fidp.example%2Fx%3Fy",
        ),
        ({"jti": "j 1"}, "/_admin/revocations?jti=j+1"),
    ],
)
async def test_a_revocation_is_201_with_its_own_location(
    proxy, s3: S3Objects, body: dict[str, str], location: str
) -> None:
    """RFC 9110 15.3.2: the 201 names the entry it created; GET, HEAD and DELETE take it."""
    client = await proxy(_config(s3))
    created = await _revoke(client, body, ADMIN_NOW)
    assert created.status == 201
    assert created.headers["Location"] == location
    entry = (await created.json())["revocation"]
    got = await client.get(location, headers=bearer(ADMIN_NOW))
    assert (got.status, await got.json()) == (200, {"revocation": entry})
    head = await client.head(location, headers=bearer(ADMIN_NOW))
    assert head.status == 200
    assert head.headers["Content-Length"] == got.headers["Content-Length"]
    assert (await client.delete(location, headers=bearer(ADMIN_NOW))).status == 200
    assert (await client.get(location, headers=bearer(ADMIN_NOW))).status == 404


async def test_head_lists_as_get_does(proxy, s3: S3Objects) -> None:
    client = await proxy(_config(s3))
    await _revoke(client, {"jti": "j1"}, ADMIN_NOW)
    got = await client.get("/_admin/revocations", headers=bearer(ADMIN_NOW))
    head = await client.head("/_admin/revocations", headers=bearer(ADMIN_NOW))
    assert (head.status, await head.read()) == (200, b"")
    same = ("Content-Length", "Content-Type", "Cache-Control", "X-Content-Type-Options")
    assert {name: head.headers[name] for name in same} == {name: got.headers[name] for name in same}
    refused = await client.head("/_admin/revocations", headers=bearer(make_token("alice")))
    assert refused.status == 403  # the access rule holds for HEAD too
    malformed = await client.get("/_admin/revocations?jti=a&sub=b", headers=bearer(ADMIN_NOW))
    assert malformed.status == 400


async def test_undo_lets_the_subject_back_in(proxy, s3: S3Objects) -> None:
    clock = Clock(T0)
    client = await proxy(_config(s3), clock=clock)
    old = make_token("alice", now=clock.now - 10)
    await _revoke(client, {"sub": "alice"})
    assert (await client.get("/stream/photos/42", headers=bearer(old))).status == 401
    assert (
        await client.delete("/_admin/revocations?sub=alice", headers=bearer(ADMIN))
    ).status == 200
    assert (await client.get("/stream/photos/42", headers=bearer(old))).status == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (bearer(make_token("alice")), 403), (bearer("not-a-token"), 401)],
)
async def test_the_admin_endpoint_keeps_to_its_access_rule(
    proxy, s3: S3Objects, headers: dict[str, str], status: int
) -> None:
    client = await proxy(_config(s3))
    response = await client.post("/_admin/revocations", json={"sub": "bob"}, headers=headers)
    assert response.status == status
    if status == 403:  # the claim the rule wants, by name (never the value it wants)
        assert await response.json() == {"error": "admin.access: claim 'role' missing"}
    assert (await client.get("/_admin/revocations", headers=headers)).status == status
    listed = await client.get("/_admin/revocations", headers=bearer(ADMIN_NOW))
    assert (await listed.json())["revocations"] == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{", "application/json", 400),
        (b"[]", "application/json", 400),
        (b'{"sub": "a", "jti": "b"}', "application/json", 400),
        (b"{}", "application/json", 400),
        (b'{"jti": "b", "iss": "x"}', "application/json", 400),
        (b'{"sub": ""}', "application/json", 400),
        (b'{"sub": 5}', "application/json", 400),
        (b'{"sub": "a", "ttl": 0}', "application/json", 400),
        (b'{"sub": "a", "ttl": true}', "application/json", 400),
        (b'{"sub": "a", "until": 5}', "application/json", 400),
        (b'{"sub": "a"}', "text/plain", 415),
        (b'{"sub": "' + b"a" * 5000 + b'"}', "application/json", 413),
    ],
)
async def test_the_admin_endpoint_refuses_what_it_cannot_use(
    proxy, s3: S3Objects, body: bytes, content_type: str, status: int
) -> None:
    client = await proxy(_config(s3))
    headers = {**bearer(ADMIN_NOW), "Content-Type": content_type}
    response = await client.post("/_admin/revocations", data=body, headers=headers)
    assert response.status == status
    assert "error" in await response.json()


async def test_the_admin_endpoint_allows_four_methods(proxy, s3: S3Objects) -> None:
    client = await proxy(_config(s3))
    response = await client.put("/_admin/revocations", headers=bearer(ADMIN_NOW))
    assert response.status == 405
    assert response.headers["Allow"] == "GET, HEAD, POST, DELETE"
    missing = await client.delete("/_admin/revocations", headers=bearer(ADMIN_NOW))
    assert missing.status == 400


async def test_without_admin_access_there_is_no_admin_endpoint(proxy, s3: S3Objects) -> None:
    client = await proxy(config_dict(s3.endpoint))
    response = await client.get("/_admin/revocations", headers=bearer(ADMIN_NOW))
    assert response.status == 404


async def test_a_configured_admin_path_is_used(proxy, s3: S3Objects) -> None:
    data = _config(s3)
    data["admin"]["path"] = "/ops/revoke"
    client = await proxy(data)
    assert (await client.get("/ops/revoke", headers=bearer(ADMIN_NOW))).status == 200
    assert (await client.get("/_admin/revocations", headers=bearer(ADMIN_NOW))).status == 404


async def test_the_cli_revokes_through_the_running_server(
    proxy, s3: S3Objects, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _config(s3)
    client = await proxy(data)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    url = f"http://127.0.0.1:{client.server.port}/_admin/revocations"
    old = make_token("alice", now=time.time() - 10)

    def cli(*args: str) -> int:
        return main(["revoke", "--config", str(config), "--url", url, *args])

    # Its own token is minted with auth.secret and the --claim items.
    assert await asyncio.to_thread(cli, "--sub", "alice", "--claim", "role=admin") == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sub"] == "alice"
    assert (await client.get("/stream/photos/42", headers=bearer(old))).status == 401

    assert await asyncio.to_thread(cli, "--list", "--token", ADMIN_NOW) == 0
    assert json.loads(capsys.readouterr().out)["sub"] == "alice"
    assert await asyncio.to_thread(cli, "--sub", "alice", "--undo", "--token", ADMIN_NOW) == 0
    assert (await client.get("/stream/photos/42", headers=bearer(old))).status == 200

    # A token the rule refuses: the refusal says which claim the rule wants and how to give
    # it; the token is not printed.
    assert await asyncio.to_thread(cli, "--jti", "x") == 1
    err = capsys.readouterr().err
    assert "the proxy refused: 403" in err
    assert "admin.access refuses this token (claim 'role' missing)" in err
    assert "mint one it lets in with --claim role=admin, or pass --token" in err
    assert await asyncio.to_thread(cli, "--jti", "x", "--token", make_token("bob", role="ops")) == 1
    err = capsys.readouterr().err
    assert "(claim 'role' does not match)" in err
    assert "eyJ" not in err


async def test_the_revoke_command_link_prints_works_as_printed(
    proxy, s3: S3Objects, tmp_path: Path
) -> None:
    """Pasted from anywhere: it names the config that signed the link, and the claims the
    admin endpoint wants (memory backend: the command goes through the running server)."""
    client = await proxy(_config(s3))
    data = _config(s3, listen={"host": "127.0.0.1", "port": client.server.port})
    config = tmp_path / "proxy.yaml"  # not ./config.yaml: the default would be another file
    config.write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=elsewhere,
            env=env,
        )

    made = await asyncio.to_thread(
        run, "link", "--config", str(config), "/admin/exports/q4.pdf", "--ttl", "600"
    )
    assert made.returncode == 0, made.stderr
    link = made.stdout.strip().split("?", 1)[1]
    assert (await client.get(f"/admin/exports/q4.pdf?{link}")).status == 200
    printed = made.stderr.split("to revoke this link: ", 1)[1].strip()
    assert printed.startswith(f"python -m proxy revoke --config {config} --claim role=admin")
    revoked = await asyncio.to_thread(run, *shlex.split(printed)[3:])
    assert revoked.returncode == 0, revoked.stderr
    assert (await client.get(f"/admin/exports/q4.pdf?{link}")).status == 401


def test_the_cli_needs_admin_access_with_the_memory_backend(
    s3: S3Objects, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(config_dict(s3.endpoint)))
    assert main(["revoke", "--config", str(config), "--sub", "alice"]) == 2
    assert "admin.access is not set" in capsys.readouterr().err
    assert main(["revoke", "--config", str(config), "--jti", "j", "--iss", "x"]) == 2
    assert "--iss goes with --sub" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"state": {"backend": "redis"}}, "state.url: required with backend redis"),
        ({"state": {"url": "redis://127.0.0.1:6379"}}, "state.url: only used with backend redis"),
        ({"state": {"backend": "redis", "url": "http://x"}}, "state.url: must be a redis://"),
        ({"state": {"timeout": 0}}, "state.timeout"),
        ({"state": {"when_down": {"revocations": "maybe"}}}, "state.when_down.revocations"),
        ({"admin": {"path": "/_adm"}}, "admin.access: required with admin.path"),
        ({"admin": {"path": "x", "access": "public"}}, "admin.path: must be a fixed path"),
        (
            {"admin": {"path": "/_sign", "access": "public"}},
            "admin.path: /_sign is also sign_api.path",
        ),
        ({"admin": {"access": {"claims": 5}}}, "admin.access"),
        ({"revocation": {"max_token_lifetime": 5}}, "revocation.max_token_lifetime"),
        ({"auth": {"require_exp": False}}, "auth.require_exp: false is not supported"),
    ],
)
def test_state_and_admin_mistakes_are_caught_at_load(
    sections: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(config_dict("http://127.0.0.1:9", **sections))
    assert problem in str(caught.value)


def test_several_workers_on_the_memory_backend_are_warned_about() -> None:
    data = config_dict("http://127.0.0.1:9", listen={"workers": 2})
    (warning,) = build_config(data).warnings
    assert warning.startswith("state.backend: memory with listen.workers > 1")
    data["state"] = {"backend": "redis", "url": "redis://127.0.0.1:6379/0"}
    assert build_config(data).warnings == ()


def test_the_redis_url_is_never_shown_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(config_dict(None, state={"backend": "redis", "url": "http://:pw@x"}))
    assert "pw" not in str(caught.value)


# --- the list itself, no I/O --------------------------------------------------------------


def _sub(value: str, iss: str | None, at: float = T0, ttl: float = 100) -> Revocation:
    return Revocation("sub", value, iss, at, at + ttl)


def test_a_subject_revocation_is_keyed_by_issuer_or_covers_every_issuer() -> None:
    revoked = RevocationList([_sub("alice", "https://a.example")])
    old = {"sub": "alice", "iat": T0 - 1}
    assert revoked.covers({**old, "iss": "https://a.example"}, T0)
    assert not revoked.covers({**old, "iss": "https://b.example"}, T0)
    everywhere = RevocationList([_sub("alice", None)])
    assert everywhere.covers({**old, "iss": "https://b.example"}, T0)
    assert everywhere.covers(old, T0)
    # Past its expiry, an entry covers nothing.
    assert not everywhere.covers(old, T0 + 100)


def test_a_subject_revocation_does_not_cover_share_links() -> None:
    revoked = RevocationList([_sub("alice", None)])
    assert not revoked.covers({"sub": "alice", "iat": T0 - 1}, T0, link=True)


def test_entries_round_trip_and_expire_by_kind() -> None:
    entry = new_revocation("sub", "alice", "https://a", T0, 3600, 30)
    assert Revocation.loads(entry.dumps()) == entry
    assert entry.expires_at == T0 + 3630
    link = new_revocation("jti", "j", None, T0, 3600, 30)
    # A share link may live 7 days; a jti entry also allows for an issuer's clock ahead.
    assert link.expires_at == T0 + 604800 + 2 * 30
    for bad in ("[]", '{"sub": 1}', '{"jti": "x", "revoked_at": "a", "expires_at": 1}'):
        with pytest.raises(ValueError):
            Revocation.loads(bad)


async def test_a_revocation_stops_the_watched_responses_it_covers_once_per_batch() -> None:
    from proxy.state import MemoryState

    state = MemoryState(build_config(config_dict("http://127.0.0.1:9")).settings, Clock(T0))
    stopped: list[str] = []
    claims = {"iat": T0 - 1, "exp": T0 + 60}
    state.watch({"sub": "alice", **claims}, lambda: stopped.append("alice"))
    state.watch({"sub": "alice", "jti": "L", **claims}, lambda: stopped.append("link"), link=True)
    bob = state.watch({"sub": "bob", **claims}, lambda: stopped.append("bob"))
    await state.revoke(new_revocation("sub", "alice", None, T0, 60, 30))
    await state.revoke(new_revocation("sub", "carol", None, T0, 60, 30))
    assert stopped == []  # one sweep after the batch, not one per entry
    await asyncio.sleep(0)
    assert stopped == ["alice"]  # a subject revocation does not cover a share link
    await state.revoke(new_revocation("jti", "L", None, T0, 60, 30))
    await asyncio.sleep(0)
    assert stopped == ["alice", "link"]
    state.unwatch(bob)
    await state.revoke(new_revocation("sub", "bob", None, T0, 60, 30))
    await asyncio.sleep(0)
    assert stopped == ["alice", "link"]  # finished before it was revoked


def test_a_lifetime_verdict_answers_only_its_own_claims_and_limit() -> None:
    """State.check_token settles a token's lifetime verdict once per claims object: it must
    never answer another token's claims (even equal-looking ones), a share link, or a
    reloaded max_token_lifetime; and revocations are still looked up on every call."""
    from proxy.errors import Unauthenticated
    from proxy.state import MemoryState

    data = config_dict("http://127.0.0.1:9", revocation={"max_token_lifetime": 3600})
    state = MemoryState(build_config(data).settings, Clock(T0))
    ok = {"sub": "alice", "iat": T0, "exp": T0 + 3600}
    too_long = {"sub": "alice", "iat": T0, "exp": T0 + 3601}
    for _ in range(2):  # the second call answers from what the first settled
        state.check_token(ok)
        with pytest.raises(Unauthenticated, match="max_token_lifetime"):
            state.check_token(too_long)
    # Another object, each time: judged on its own claims, never on the verdict of `ok`.
    with pytest.raises(Unauthenticated, match="without iat"):
        state.check_token({"sub": "alice", "exp": T0 + 60})
    # The same claims as a share link: judged against the links' limit, and not remembered.
    state.check_token(too_long, link=True)
    with pytest.raises(Unauthenticated, match="max_token_lifetime"):
        state.check_token(too_long)
    # A reload that shortens max_token_lifetime refuses a token that passed before.
    data["revocation"]["max_token_lifetime"] = 60
    state.reconfigure(build_config(data).settings)
    with pytest.raises(Unauthenticated, match="max_token_lifetime"):
        state.check_token(ok)
    data["revocation"]["max_token_lifetime"] = 3600
    state.reconfigure(build_config(data).settings)
    state.check_token(ok)
    # A settled verdict is no pass: revocation is looked up on every call.
    state.revoked.add(new_revocation("sub", "alice", None, T0, 3600, 30))
    with pytest.raises(Unauthenticated, match="token revoked"):
        state.check_token(ok)
