"""The `cloudfront:` section and cloudfront routes: mistakes caught at load, each naming its
key path and the fix; the key checked (readable, RSA 2048 or ECDSA P-256) and never shown."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, parse_config

from .cfkeys import (
    DOMAIN,
    KEY_ID,
    OTHER_ID,
    cloudfront_config,
    ec_key,
    private_pem,
    public_pem,
    rsa_key,
    write_key,
)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return write_key(tmp_path, "cf.pem", private_pem(rsa_key()))


def _problems(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(data), env=env or {})
    return caught.value.problems


def _load(data: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return parse_config(yaml.safe_dump(data), env=env or {})


def test_the_issues_config_loads_with_the_key_path_from_the_environment(key_file: Path) -> None:
    data = cloudfront_config(Path("${CLOUDFRONT_KEY_FILE}"), cookie_domain="example.com")
    config = _load(data, env={"CLOUDFRONT_KEY_FILE": str(key_file)})
    signer = config.cloudfront
    assert signer is not None
    assert signer.origin == f"https://{DOMAIN}"
    assert signer.active.key_id == KEY_ID
    routes = {route.name: route for route in config.routes}
    assert routes["cdn-albums"].cookie_scope.source == "albums/{album}/*"
    assert routes["cdn-albums"].cookie_scope.path_for("albums/trip/1.jpg") == "/albums/trip/*"
    assert routes["cdn-photos"].cookie_scope is None
    assert config.warnings == ()


def test_the_key_path_variable_unset_names_it() -> None:
    data = cloudfront_config(Path("${CLOUDFRONT_KEY_FILE}"))
    assert _problems(data) == [
        "cloudfront.private_key: environment variable CLOUDFRONT_KEY_FILE is not set; export "
        "CLOUDFRONT_KEY_FILE=/path/to/private_key.pem"
    ]


def test_a_cloudfront_route_without_the_section_says_what_to_add(key_file: Path) -> None:
    data = cloudfront_config(key_file)
    del data["cloudfront"]
    problems = _problems(data)
    assert problems[0].startswith(
        "routes[9] (cdn-photos).delivery: cloudfront needs the top-level cloudfront section; "
        "add cloudfront: {domain: cdn.example.com, key_pair_id: K2JCJMDEHXQW5F, private_key: "
    )
    assert len(problems) == 2  # both cloudfront routes


def test_an_unreadable_key_names_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    assert _problems(cloudfront_config(missing)) == [
        f"cloudfront.private_key: cannot read {missing} (No such file or directory); point it "
        f"at the PEM file of key {KEY_ID}"
    ]


@pytest.mark.parametrize(
    ("pem", "says"),
    [
        (lambda: private_pem(rsa_key(1024)), "is an RSA key of 1024 bits; CloudFront takes RSA"),
        (lambda: private_pem(ec_key(curve="P-384")), "is an ECDSA key on curve secp384r1"),
        (lambda: public_pem(rsa_key()), "is not a PEM private key"),
        (lambda: b"hello", "is not a PEM private key"),
    ],
    ids=["rsa1024", "p384", "public-key", "not-pem"],
)
def test_a_key_cloudfront_refuses_is_named_never_printed(
    tmp_path: Path, pem: Any, says: str
) -> None:
    material = pem()
    path = write_key(tmp_path, "bad.pem", material)
    (problem,) = _problems(cloudfront_config(path))
    assert problem.startswith(f"cloudfront.private_key: {path} {says}")
    for line in material.splitlines()[1:-1]:
        assert line.decode()[:20] not in problem


def test_an_ecdsa_p256_key_signs(tmp_path: Path) -> None:
    path = write_key(tmp_path, "ec.pem", private_pem(ec_key(), "traditional"))
    signer = _load(cloudfront_config(path)).cloudfront
    assert repr(signer.active) == f"SigningKey({KEY_ID}, ECDSA secp256r1)"


@pytest.mark.parametrize(
    ("domain", "origin"),
    [
        ("cdn.example.com", "https://cdn.example.com"),
        ("CDN.Example.com", "https://cdn.example.com"),
        ("https://d111111abcdef8.cloudfront.net/", "https://d111111abcdef8.cloudfront.net"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081"),
    ],
)
def test_the_domain_becomes_the_distributions_origin(
    key_file: Path, domain: str, origin: str
) -> None:
    data = cloudfront_config(key_file, domain=domain)
    data["routes"].pop()  # cookies could not reach *.cloudfront.net (tested below)
    assert _load(data).cloudfront.origin == origin


@pytest.mark.parametrize(
    ("domain", "says"),
    [
        ("cdn.example.com/photos", "must be a domain name with no path"),
        ("http://cdn.example.com", "CloudFront is reached over https"),
        ("ftp://cdn.example.com", "must be a domain name or an https:// origin"),
        ("cdn_example.com", "is not a domain name"),
        ("user@cdn.example.com", "no path, query or user"),
        ("", "is not a domain name"),
    ],
)
def test_a_bad_domain_is_refused_with_the_fix(key_file: Path, domain: str, says: str) -> None:
    (problem,) = _problems(cloudfront_config(key_file, domain=domain))
    assert problem.startswith("cloudfront.domain:")
    assert says in problem
    assert "e.g. d111111abcdef8.cloudfront.net or cdn.example.com" in problem


def test_cookie_routes_cannot_use_the_cloudfront_net_domain(key_file: Path) -> None:
    (problem,) = _problems(cloudfront_config(key_file, domain="d111111abcdef8.cloudfront.net"))
    assert problem.startswith(
        "routes[10] (cdn-albums).cookie_scope: cookies set by this proxy never reach "
        "d111111abcdef8.cloudfront.net (cloudfront.net is a public suffix)"
    )


def test_the_cookie_domain_must_include_the_distribution(key_file: Path) -> None:
    (problem,) = _problems(cloudfront_config(key_file, cookie_domain="other.org"))
    assert problem.startswith(
        "cloudfront.cookie_domain: other.org does not include the distribution's host "
        "cdn.example.com"
    )
    assert _load(cloudfront_config(key_file, cookie_domain=".Example.com")).settings.cloudfront
    assert _load(cloudfront_config(key_file, cookie_domain="cdn.example.com")).cloudfront


def _with_route(key_file: Path, index: int, **changes: Any) -> dict[str, Any]:
    data = cloudfront_config(key_file)
    route = data["routes"][index]
    for name, value in changes.items():
        if value is None:
            route.pop(name, None)
        else:
            route[name] = value
    return data


@pytest.mark.parametrize(
    ("index", "changes", "expected"),
    [
        (
            10,
            {"cookie_scope": "photos/{album}/*"},
            "routes[10] (cdn-albums).cookie_scope: 'photos/{album}/*' does not cover the "
            "route's key 'albums/{album}/{name}'",
        ),
        (
            10,
            {"cookie_scope": "albums/{albm}/*"},
            "routes[10] (cdn-albums).cookie_scope: {albm} is not in the route's key",
        ),
        (10, {"cookie_scope": "albums/{album/*"}, "routes[10] (cdn-albums).cookie_scope: "),
        (
            0,
            {"cookie_scope": "employees/*"},
            "routes[0] (employee-photos).cookie_scope: only applies to delivery: cloudfront",
        ),
        (
            9,
            {"disposition": "attachment"},
            "routes[9] (cdn-photos).disposition: a CloudFront URL cannot carry response headers",
        ),
        (9, {"cache_control": "public"}, "routes[9] (cdn-photos).cache_control: a CloudFront"),
        (9, {"cache": {"max_age": 5}}, "routes[9] (cdn-photos).cache: a CloudFront URL"),
        (
            9,
            {"methods": ["GET", "PUT"], "upload": {"max_bytes": 10}},
            "routes[9] (cdn-photos).methods: PUT is not taken on a cloudfront route",
        ),
        (
            9,
            {"sse_customer_key": "k" * 32},
            "routes[9] (cdn-photos).sse_customer_key: needs delivery: stream (got cloudfront)",
        ),
    ],
)
def test_route_mistakes_name_the_key(
    key_file: Path, index: int, changes: dict[str, Any], expected: str
) -> None:
    problems = _problems(_with_route(key_file, index, **changes))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_a_scope_wider_than_the_key_is_fine_and_a_claim_may_narrow_it(key_file: Path) -> None:
    data = _with_route(
        key_file,
        10,
        match="/cdn/users/{name}",
        key="users/{claims.sub}/{name}",
        cookie_scope="users/{claims.sub}/*",
    )
    scope = _load(data).routes[10].cookie_scope
    assert scope.path_for("users/alice/x.jpg") == "/users/alice/*"


@pytest.mark.parametrize("scope", ["albums/{album}*", "albums/*{album}/*", "albums/{album}?/*"])
def test_a_wildcard_beside_a_value_is_refused(key_file: Path, scope: str) -> None:
    # With albums/{album}*, album a's cookies would open album ab too.
    problems = _problems(_with_route(key_file, 10, cookie_scope=scope))
    assert any(
        problem.startswith("routes[10] (cdn-albums).cookie_scope:")
        and "wildcard right beside a value" in problem
        for problem in problems
    ), problems


def test_stable_on_a_cookie_route_is_a_warning(key_file: Path) -> None:
    config = _load(_with_route(key_file, 10, stable=3600))
    (warning,) = config.warnings
    assert warning.startswith("routes[10] (cdn-albums).stable: browsers cache this route's 302")


def test_a_key_file_others_can_read_is_a_warning(key_file: Path) -> None:
    os.chmod(key_file, 0o644)
    (warning,) = _load(cloudfront_config(key_file)).warnings
    assert warning == (
        f"cloudfront.private_key: {key_file} can be read by other users (mode 0644); chmod 600 it"
    )


def _rotation(tmp_path: Path, keys: list[dict[str, Any]]) -> dict[str, Any]:
    data = cloudfront_config(tmp_path / "unused.pem")
    section = data["cloudfront"]
    del section["key_pair_id"], section["private_key"]
    section["keys"] = keys
    return data


def test_rotation_signs_with_the_active_key_and_lists_the_others(tmp_path: Path) -> None:
    new = write_key(tmp_path, "new.pem", private_pem(ec_key()))
    old = write_key(tmp_path, "old.pub", public_pem(rsa_key()))
    data = _rotation(
        tmp_path,
        [
            {"id": OTHER_ID, "private_key": str(new), "active": True},
            {"id": KEY_ID, "public_key": str(old)},
        ],
    )
    signer = _load(data).cloudfront
    assert signer.active.key_id == OTHER_ID
    assert sorted(signer.trusted) == sorted([KEY_ID, OTHER_ID])


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ([{"id": KEY_ID, "private_key": "a.pem"}], "cloudfront.keys: mark exactly one key"),
        (
            [
                {"id": KEY_ID, "private_key": "a.pem", "active": True},
                {"id": KEY_ID, "private_key": "a.pem"},
            ],
            "cloudfront.keys: each id may appear only once",
        ),
        (
            [{"id": KEY_ID, "public_key": "a.pub", "active": True}],
            "cloudfront.keys[0]: the active key signs, so it needs private_key",
        ),
        ([{"id": "k-1", "private_key": "a.pem"}], "cloudfront.keys[0].id: String should match"),
    ],
)
def test_rotation_mistakes_are_named(
    tmp_path: Path, keys: list[dict[str, Any]], expected: str
) -> None:
    write_key(tmp_path, "a.pem", private_pem(rsa_key()))
    data = _rotation(tmp_path, keys)
    for key in data["cloudfront"]["keys"]:
        for name in ("private_key", "public_key"):
            if name in key:
                key[name] = str(tmp_path / key[name])
    problems = _problems(data)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_keys_and_the_single_key_form_do_not_mix(tmp_path: Path, key_file: Path) -> None:
    data = cloudfront_config(key_file)
    data["cloudfront"]["keys"] = [{"id": OTHER_ID, "private_key": str(key_file), "active": True}]
    assert _problems(data) == [
        "cloudfront.keys: give either keys (for a rotation) or key_pair_id with private_key, "
        "not both"
    ]


def test_check_validates_the_key_and_shows_its_kind_never_its_material(
    tmp_path: Path, key_file: Path
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cloudfront_config(key_file)))

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "proxy", "check", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = check()
    assert result.returncode == 0, result.stderr
    assert (
        f"  cloudfront: https://{DOMAIN}, signs with key {KEY_ID} (RSA 2048, SHA1)" in result.stdout
    )
    assert (
        "  cdn-albums: /cdn/albums/{album}/{name} -> s3://hr-private/albums/{album}/{name} "
        "[cloudfront, cookies for albums/{album}/*]" in result.stdout
    )
    assert "PRIVATE" not in result.stdout + result.stderr
    key_file.write_bytes(private_pem(rsa_key(1024)))
    refused = check()
    assert refused.returncode == 2
    assert f"cloudfront.private_key: {key_file} is an RSA key of 1024 bits" in refused.stderr


def test_the_shipped_configs_cloudfront_example_loads_once_uncommented(key_file: Path) -> None:
    import re

    repo = Path(__file__).resolve().parent.parent
    text = (repo / "config.yaml").read_text()
    section = r"^# (cloudfront:|  (domain|key_pair_id|private_key|cookie_domain):)"
    text = re.sub(section, r"\1", text, flags=re.MULTILINE)
    text = re.sub(r"^  # (- name: cdn|  )", r"  \1", text, flags=re.MULTILINE)
    env = {"JWT_SECRET": "s" * 64, "CLOUDFRONT_KEY_FILE": str(key_file)}
    config = parse_config(text, env=env)
    routes = {route.name: route for route in config.routes}
    assert routes["cdn-albums"].cookie_scope is not None
    assert routes["cdn-photos"].settings.delivery == "cloudfront"
    assert config.cloudfront is not None and config.warnings == ()


@pytest.mark.parametrize("shape", ["pem", "one-line-base64", "ec-base64"])
def test_a_key_pasted_where_its_path_belongs_is_never_printed(tmp_path: Path, shape: str) -> None:
    """The common mistake: the PEM itself (or its base64 on one line) in the variable that
    should name the key file. `check` must refuse it without echoing it as a path."""
    pem = private_pem(ec_key() if shape == "ec-base64" else rsa_key()).decode()
    body = "".join(pem.splitlines()[1:-1])
    value = pem if shape == "pem" else body
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cloudfront_config(Path("${CLOUDFRONT_KEY_FILE}"))))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CLOUDFRONT_KEY_FILE": value},
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "cloudfront.private_key: holds what looks like the key itself" in output
    for line in pem.splitlines()[1:-1]:
        assert line[:16] not in output
