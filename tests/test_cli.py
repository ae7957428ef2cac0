"""The command line as a user runs it: `python -m proxy check | token | serve` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml

from .conftest import SECRET, S3Objects, bearer, config_dict

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def test_check_accepts_the_example_config() -> None:
    result = _run("check", "--config", "config.yaml", env={"JWT_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    assert "config.yaml: OK, 4 routes" in result.stdout
    assert "employee-photos: /photos/{employee_id} -> s3://hr-private/" in result.stdout


def test_check_names_the_bad_key_and_exits_non_zero(tmp_path: Path) -> None:
    data = config_dict()
    data["routes"][0]["ttl"] = 10**6
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = _run("check", "--config", str(path))
    assert result.returncode == 2
    assert "routes[0] (employee-photos).ttl: Input should be less than or equal to 604800" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_token_prints_a_token_the_proxy_accepts() -> None:
    result = _run(
        "token",
        "--config",
        "config.yaml",
        "--sub",
        "alice",
        "--claim",
        "role=admin",
        "--claim",
        'groups=["a","b"]',
        "--ttl",
        "600",
        env={"JWT_SECRET": SECRET},
    )
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["role"] == "admin"
    assert claims["groups"] == ["a", "b"]
    assert claims["exp"] - claims["iat"] == 600


def test_token_refuses_a_lifetime_the_proxy_would_refuse() -> None:
    args = ["token", "--config", "config.yaml", "--sub", "alice", "--ttl", "86401"]
    result = _run(*args, env={"JWT_SECRET": SECRET})
    assert result.returncode == 2
    assert "revocation.max_token_lifetime" in result.stderr and not result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("ttl", ["86401", "0"])
def test_token_refuses_a_ttl_the_proxy_would_refuse(ttl: str) -> None:
    """Past revocation.max_token_lifetime the proxy refuses the token: none is printed."""
    result = _run(
        "token", "--config", "config.yaml", "--sub", "alice", "--ttl", ttl,
        env={"JWT_SECRET": SECRET},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    assert "--ttl must be between 1 and 86400 seconds (revocation.max_token_lifetime" in (
        result.stderr
    )
    ok = _run(
        "token", "--config", "config.yaml", "--sub", "alice", "--ttl", "86400",
        env={"JWT_SECRET": SECRET},
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr


def test_serve_runs_answers_and_stops_cleanly_on_sigterm(s3: S3Objects, tmp_path: Path) -> None:
    port = _free_port()
    path = tmp_path / "config.yaml"
    data = config_dict(s3.endpoint, listen={"host": "127.0.0.1", "port": port})
    path.write_text(yaml.safe_dump(data))
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/stream/photos/42", headers=bearer(_token())
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert response.status == 200
                    assert response.read() == s3.photo
                    break
            except urllib.error.URLError:
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "proxy did not start"
                time.sleep(0.05)
        # A request line the parser rejects (here: a raw non-ASCII byte) is answered and
        # logged by the proxy, with no part of the line (its query carries a token) in either.
        token = _token()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(f"GET /p/café.txt?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert b" 400 " in raw.recv(1000).split(b"\r\n", 1)[0]
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    # stdout is the access log alone: every line one JSON object (the start-up line, the
    # drain and shutdown notes are diagnostics, on stderr, JSON too)
    access = [json.loads(line) for line in stdout.splitlines()]
    assert [(a["route"], a["status"]) for a in access] == [("photo-stream", 200), (None, 400)]
    diagnostics = [json.loads(line) for line in stderr.splitlines()]
    assert any("listening on" in line["message"] for line in diagnostics)
    assert access[1]["path"] == "-"
    assert "Error handling request" not in stdout + stderr
    assert token not in stdout + stderr


def _token() -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "iat": now, "exp": now + 60}, SECRET, algorithm="HS256")


# The first hour: `serve` on the shipped config.yaml, as someone trying it would run it.

# Environment variables through which botocore could find credentials; removed, with the
# shared files pointed at nothing and instance metadata off, the standard chain finds none.
_CREDENTIAL_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


def _first_run_env(**values: str) -> dict[str, str]:
    """This environment without JWT_SECRET, S3_ENDPOINT_URL or LINK_SECRET, plus `values`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("JWT_SECRET", "S3_ENDPOINT_URL", "LINK_SECRET", "AWS_REGION")
    }
    env.update(values)
    return env


@pytest.mark.parametrize("secret", [None, ""], ids=["unset", "empty"])
def test_serve_refuses_to_start_without_a_jwt_secret(secret: str | None) -> None:
    env = _first_run_env() if secret is None else _first_run_env(JWT_SECRET=secret)
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", "config.yaml", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 2
    assert "auth.secret:" in result.stderr
    assert "python -c 'import secrets; print(secrets.token_urlsafe(64))'" in result.stderr
    assert "listening" not in result.stdout


def test_serve_on_the_shipped_config_without_aws_credentials_says_what_will_fail() -> None:
    """With a real secret `serve` starts on config.yaml (S3 is AWS: no S3_ENDPOINT_URL), warns
    at start-up that it has no AWS credentials, and a stream request's log names GetObject."""
    env = _first_run_env(
        JWT_SECRET=SECRET,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    for name in _CREDENTIAL_VARIABLES:
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "serve", "--config", "config.yaml", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert process.stderr is not None
        started: list[dict[str, Any]] = []
        while "listening on" not in (line := process.stderr.readline()):
            assert line, process.communicate()  # the output ended: it did not start
            started.append(json.loads(line))  # diagnostics: one JSON object a line
        port = int(json.loads(line)["url"].rsplit(":", 1)[1])
        token = jwt.encode(
            {"sub": "root", "role": "admin", "iat": int(time.time()), "exp": int(time.time()) + 60},
            SECRET,
            algorithm="HS256",
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/admin/exports/q4.pdf", headers=bearer(token)
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        refused.value.close()
        assert refused.value.code == 502
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    warning = next(line for line in started if "no AWS credentials" in line["message"])
    assert warning["level"] == "warning"
    assert "streaming (GetObject, HeadObject) and signing" in warning["message"]
    assert "AWS_ACCESS_KEY_ID" in warning["message"] and "task role" in warning["message"]
    # stdout is the access log alone, stderr the diagnostics alone: each a JSON object a line
    (access,) = [json.loads(line) for line in stdout.splitlines()]
    assert all(json.loads(line)["level"] for line in stderr.splitlines())
    assert access["status"] == 502
    assert access["reason"].startswith("GetObject: no AWS credentials")
    assert token not in stdout + stderr
