"""Config loading: every mistake is caught at load, naming the key path and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, load_config, parse_config

from .conftest import SECRET, build_config, config_dict

REPO = Path(__file__).resolve().parent.parent


def _problems(data: dict[str, Any] | str, env: dict[str, str] | None = None) -> list[str]:
    text = data if isinstance(data, str) else yaml.safe_dump(data)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env or {})
    return caught.value.problems


def _route(**changes: Any) -> dict[str, Any]:
    data = config_dict()
    data["routes"] = [{**data["routes"][0], **changes}]
    return data


def test_the_shipped_example_config_loads() -> None:
    config = load_config(REPO / "config.yaml", env={"JWT_SECRET": SECRET})
    assert [route.name for route in config.routes] == [
        "employee-photos",
        "admin-exports",
        "my-files",
        "user-albums",
    ]
    # No S3_ENDPOINT_URL: AWS itself, in AWS_REGION's region when that is set.
    assert config.settings.s3.endpoint_url is None
    assert config.settings.s3.region == "us-east-1"
    assert config.settings.s3.addressing_style == "auto"
    assert config.settings.auth.link_secret is None  # no LINK_SECRET: share links are off


def test_the_shipped_config_takes_its_endpoint_region_and_link_secret_from_the_env() -> None:
    link_secret = "link-" + "y" * 40
    env = {
        "JWT_SECRET": SECRET,
        "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "S3_ADDRESSING_STYLE": "path",
        "AWS_REGION": "eu-west-1",
        "LINK_SECRET": link_secret,
    }
    settings = load_config(REPO / "config.yaml", env=env).settings
    assert (settings.s3.endpoint_url, settings.s3.addressing_style, settings.s3.region) == (
        "http://127.0.0.1:9000",
        "path",
        "eu-west-1",
    )
    assert settings.auth.link_secret is not None
    assert settings.auth.link_secret.get_secret_value() == link_secret


@pytest.mark.parametrize("env", [{}, {"S3_ENDPOINT_URL": ""}], ids=["unset", "empty"])
def test_an_empty_endpoint_means_aws(env: dict[str, str]) -> None:
    data = config_dict(
        s3={"endpoint_url": "${S3_ENDPOINT_URL:-}", "public_endpoint_url": "${S3_PUBLIC:-}"}
    )
    settings = parse_config(yaml.safe_dump(data), env=env).settings
    assert settings.s3.endpoint_url is None
    assert settings.s3.public_endpoint_url is None
    literal = parse_config(yaml.safe_dump(config_dict(s3={"endpoint_url": ""}))).settings
    assert literal.s3.endpoint_url is None


@pytest.mark.parametrize("env", [{}, {"LINK_SECRET": ""}], ids=["unset", "empty"])
def test_an_empty_link_secret_turns_share_links_off(env: dict[str, str]) -> None:
    data = config_dict(auth={"link_secret": "${LINK_SECRET:-}"})
    assert parse_config(yaml.safe_dump(data), env=env).settings.auth.link_secret is None


def test_a_default_applies_to_an_empty_variable_as_in_the_shell() -> None:
    data = config_dict(s3={"region": "${AWS_REGION:-eu-central-1}"})
    settings = parse_config(yaml.safe_dump(data), env={"AWS_REGION": ""}).settings
    assert settings.s3.region == "eu-central-1"


def test_defaults_fill_what_is_left_out() -> None:
    config = parse_config(
        yaml.safe_dump(
            {
                "auth": {"secret": SECRET},
                "routes": [
                    {
                        "name": "r",
                        "match": "/f/{id}",
                        "bucket": "bkt",
                        "key": "{id}",
                        "delivery": "stream",
                        "access": "authenticated",
                    }
                ],
            }
        ),
        env={},
    )
    settings = config.settings
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 8080)
    assert settings.auth.algorithms == ["HS256"]
    assert [s.kind for s in settings.auth.sources] == ["header", "cookie", "query"]
    assert settings.routes[0].ttl == 300
    assert settings.s3.endpoint_url is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"delivery": "teleport"}, "routes[0] (employee-photos).delivery: Input should be"),
        ({"ttl": 604801}, "routes[0] (employee-photos).ttl: Input should be less than or equal"),
        ({"ttl": 0}, "routes[0] (employee-photos).ttl: Input should be greater than or equal"),
        (
            {"key": "employees/{employee}/photo.jpg"},
            "routes[0] (employee-photos).key: {employee} is not a parameter of match",
        ),
        ({"access": "everyone"}, "routes[0] (employee-photos).access: unknown access rule"),
        (
            {"access": {"claims": {"sub": "{owner}"}}},
            "routes[0] (employee-photos).access: claims.sub: {owner} is not a parameter",
        ),
        ({"match": "photos/{id}"}, "routes[0] (employee-photos).match: must start with '/'"),
        ({"colour": "blue"}, "routes[0] (employee-photos).colour: unknown key"),
        ({"cache_control": "private\r\nSet-Cookie: x"}, "cache_control: must be a single line"),
        (
            {"access": "public", "key": "users/{claims.sub}/photo.jpg"},
            "a public route cannot use claims in its key",
        ),
    ],
)
def test_route_mistakes_name_the_key(changes: dict[str, Any], expected: str) -> None:
    problems = _problems(_route(**changes))
    assert any(expected in problem for problem in problems), problems


def test_a_route_without_access_is_refused() -> None:
    data = _route()
    del data["routes"][0]["access"]
    assert _problems(data) == ["routes[0] (employee-photos).access: required key is missing"]


def test_missing_secret_names_the_variable() -> None:
    data = config_dict()
    data["auth"]["secret"] = "${JWT_SECRET}"
    problems = _problems(data)
    assert problems == [
        "auth.secret: environment variable JWT_SECRET is not set; export "
        "JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(64))')"
    ]


def test_an_empty_secret_variable_is_refused_with_the_fix() -> None:
    data = config_dict()
    data["auth"]["secret"] = "${JWT_SECRET}"
    (problem,) = _problems(data, env={"JWT_SECRET": ""})
    assert problem.startswith("auth.secret: required for HS256; set it to ${JWT_SECRET}")
    assert "export JWT_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(64))')" in (
        problem
    )


def test_short_secret_is_refused_with_the_fix() -> None:
    data = config_dict(auth={"secret": "short"})
    (problem,) = _problems(data)
    assert problem.startswith("auth.secret: too short for HS256 (5 bytes, need 32)")
    assert "secrets.token_urlsafe" in problem


def test_no_secret_at_all() -> None:
    data = config_dict()
    del data["auth"]["secret"]
    (problem,) = _problems(data)
    assert problem.startswith("auth.secret: required for HS256")


@pytest.mark.parametrize("alg", ["none", "None", "HS1"])
def test_bad_algorithms_are_refused(alg: str) -> None:
    (problem,) = _problems(config_dict(auth={"algorithms": ["HS256", alg]}))
    assert problem.startswith("auth.algorithms[1]:") or problem.startswith("auth.algorithms:")


def test_unreadable_public_key_file(tmp_path: Path) -> None:
    data = config_dict(auth={"algorithms": ["RS256"], "public_key_file": str(tmp_path / "no.pem")})
    (problem,) = _problems(data)
    assert problem.startswith(f"auth.public_key_file: cannot read {tmp_path / 'no.pem'}")


def test_invalid_public_key(tmp_path: Path) -> None:
    key = tmp_path / "bad.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    data = config_dict(auth={"algorithms": ["RS256"], "public_key_file": str(key)})
    assert _problems(data) == ["auth.public_key_file: not a valid PEM public key for RS256"]


def test_asymmetric_algorithm_without_a_key() -> None:
    (problem,) = _problems(config_dict(auth={"algorithms": ["RS256"]}))
    assert problem.startswith("auth.jwks_url: RS256 needs keys: set jwks_url")


def test_bad_yaml_reports_its_line() -> None:
    text = "listen:\n  host: 127.0.0.1\nroutes:\n  - name: [unclosed\n"
    (problem,) = _problems(text)
    assert problem.startswith("<config>: line 5")
    assert "invalid YAML" in problem


def test_several_mistakes_are_reported_together() -> None:
    data = config_dict()
    data["routes"][0]["ttl"] = -1
    data["routes"][1]["delivery"] = "fax"
    assert len(_problems(data)) == 2


def test_every_kind_of_mistake_is_reported_in_one_run() -> None:
    """An unset variable, shape errors and cross-check errors together: `check` is run once,
    not once per kind. Route numbers stay those of the file, though a broken route is left
    out of the cross-checks."""
    data = config_dict()
    data["auth"]["secret"] = "${JWT_SECRET}"
    data["limits"] = {"max_streams": 0}
    data["routes"][1]["delivery"] = "fax"
    data["routes"][3]["key"] = "{nope}"
    data["routes"][4]["name"] = data["routes"][0]["name"]
    problems = _problems(data)
    assert [problem.split(":", 1)[0] for problem in problems] == [
        "auth.secret",
        "limits.max_streams",
        "routes[1] (photo-stream).delivery",
        "routes[3] (admin-links).key",
        "routes[4] (employee-photos).name",
    ]
    assert "environment variable JWT_SECRET is not set" in problems[0]  # said once


def test_a_broken_auth_section_does_not_make_up_route_problems() -> None:
    """auth is replaced by its defaults to check the rest: its own and the issuers' checks,
    which would judge against those defaults, are left out."""
    data = config_dict(auth={"algorithms": ["HS1"]})
    data["auth"]["issuers"] = None
    data["routes"][0]["issuers"] = ["staff"]
    data["routes"][2]["key"] = "{nope}"
    problems = _problems(data)
    assert [problem.split(":", 1)[0] for problem in problems] == [
        "auth.algorithms",
        "routes[2] (admin-exports).key",
    ], problems


def test_duplicate_route_names() -> None:
    data = config_dict()
    data["routes"][1]["name"] = data["routes"][0]["name"]
    assert any("duplicate route name" in p for p in _problems(data))


def test_env_expansion_with_default() -> None:
    data = config_dict()
    data["s3"]["endpoint_url"] = "${S3_URL:-http://127.0.0.1:9000}"
    data["auth"]["secret"] = "${JWT_SECRET}"
    config = parse_config(yaml.safe_dump(data), env={"JWT_SECRET": SECRET})
    assert config.settings.s3.endpoint_url == "http://127.0.0.1:9000"
    assert config.settings.auth.secret is not None
    assert config.settings.auth.secret.get_secret_value() == SECRET
    assert SECRET not in repr(config.settings)


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("/nonexistent/config.yaml")
    assert caught.value.problems[0].startswith("/nonexistent/config.yaml: cannot read")


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            {"algorithms": ["RS256"], "jwks_url": "http://idp.example/jwks.json"},
            "auth.jwks_url: must be an https:// URL",
        ),
        (
            {"algorithms": ["HS256"], "secret": SECRET, "jwks_url": "https://idp.example/jwks"},
            "auth.algorithms: public keys are configured but no asymmetric algorithm",
        ),
        (
            {"issuers": [{"algorithms": ["HS256"], "secret": SECRET}]},
            "auth.issuers[0].issuer: required when several issuers are configured",
        ),
        (
            {"secret": SECRET, "issuers": [{"issuer": "a", "secret": SECRET}]},
            "auth.secret: with auth.issuers, set keys inside each issuer instead",
        ),
        (
            {"issuers": [{"issuer": "a", "algorithms": ["RS256"]}]},
            "auth.issuers[0].jwks_url: RS256 needs keys",
        ),
        (
            {"issuers": [{"issuer": "a", "secret": SECRET}, {"issuer": "a", "secret": SECRET}]},
            "auth.issuers: each issuer may appear only once",
        ),
        ({"secret": SECRET, "link_secret": "short"}, "auth.link_secret: at least 32 bytes"),
        ({"secret": SECRET, "link_secret": SECRET}, "auth.link_secret: must differ"),
    ],
)
def test_auth_mistakes_name_the_key(auth: dict[str, Any], expected: str) -> None:
    data = config_dict()
    data["auth"] = auth
    problems = _problems(data)
    assert any(expected in problem for problem in problems), problems


def test_jwks_over_plain_http_is_allowed_on_loopback_only() -> None:
    data = config_dict()
    data["auth"] = {"algorithms": ["RS256"], "jwks_url": "http://127.0.0.1:9999/jwks.json"}
    assert parse_config(yaml.safe_dump(data), env={}).settings.auth.jwks_url


def test_a_jwks_provider_without_audience_or_issuer_is_a_warning() -> None:
    data = config_dict(auth={"algorithms": ["RS256"], "jwks_url": "https://idp.example/jwks"})
    data["auth"].pop("secret")
    data["auth"]["algorithms"] = ["RS256"]
    warnings = build_config(data).warnings
    assert warnings[0].startswith("auth.audience: not set, so a token this provider signed")
    assert warnings[1].startswith("auth.issuer: not set")
    data["auth"].update(audience="files", issuer="https://idp.example/")
    assert build_config(data).warnings == ()


def test_caller_caps_not_below_the_s3_pool_are_a_warning() -> None:
    data = config_dict(s3={"max_connections": 16})
    client, subject = build_config(data).warnings  # the default caps are 16
    assert client.startswith("limits.max_streams_per_client: 16 is not below s3.max_connec")
    assert subject.startswith("limits.max_streams_per_subject: 16 is not below")
    data["limits"] = {"max_streams_per_client": 4, "max_streams_per_subject": 4}
    assert build_config(data).warnings == ()


def test_the_cli_shows_config_warnings(tmp_path: Path) -> None:
    data = config_dict(auth={"algorithms": ["RS256"], "jwks_url": "https://idp.example/jwks"})
    data["auth"].pop("secret")
    data["auth"]["algorithms"] = ["RS256"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert f"config warning in {path}: auth.audience: not set" in result.stderr


def test_s3_engine_is_builtin_unless_aiobotocore_is_named() -> None:
    assert build_config(config_dict()).settings.s3.engine == "builtin"
    chosen = build_config(config_dict(s3={"engine": "aiobotocore"}))
    assert chosen.settings.s3.engine == "aiobotocore"
    assert _problems(config_dict(s3={"engine": "boto3"})) == [
        "s3.engine: Input should be 'builtin' or 'aiobotocore' (got 'boto3')"
    ]


def test_the_audit_is_off_unless_a_path_is_set(tmp_path: Path) -> None:
    assert build_config(config_dict()).settings.audit.path is None
    config = load_config(_write(tmp_path, config_dict(audit={"path": "logs/audit.jsonl"})))
    assert config.settings.audit.path == str(tmp_path / "logs" / "audit.jsonl")
    assert config.settings.audit.max_bytes == 100 * 1024 * 1024
    stdout = parse_config(yaml.safe_dump(config_dict(audit={"path": "-", "max_bytes": 0})))
    assert stdout.settings.audit.path == "-"


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    (tmp_path / "logs").mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("audit", "expected"),
    [
        ({"path": "/nonexistent/dir/audit.jsonl"}, "audit.path: directory /nonexistent/dir does"),
        ({"path": "logs"}, "audit.path: "),
        ({"path": "  "}, 'audit.path: must be a file path, or "-" for stdout'),
        ({"path": "a.jsonl", "max_bytes": -1}, "audit.max_bytes: Input should be greater"),
        ({"path": "a.jsonl", "rotate": True}, "audit.rotate: unknown key"),
    ],
)
def test_audit_mistakes_name_the_key(tmp_path: Path, audit: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, config_dict(audit=audit)))
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value
