"""How the shared state is reached, as the config says it: Redis URLs (plain, TLS, Sentinel)
parsed without I/O, mistakes caught at load with the key path and never the URL or a
password, and the client each URL builds (what redis-py is handed; nothing is sent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.connection import SSLConnection
from redis.asyncio.sentinel import SentinelManagedSSLConnection

from proxy.config import ConfigError
from proxy.redisurl import SentinelAddress, check_url, sentinel_address
from proxy.state.connect import BlockingSentinelPool, open_link

from .conftest import build_config, config_dict

SECRET_WORD = "hunter2-secret"


def _state(**state: Any) -> Any:
    return build_config(config_dict(None, state={"backend": "redis", **state})).settings.state


def _refused(**state: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        build_config(config_dict(None, state={"backend": "redis", **state}))
    return str(caught.value)


@pytest.mark.parametrize(
    ("url", "address"),
    [
        (
            "redis+sentinel://s1:26380,s2/mymaster/2",
            SentinelAddress((("s1", 26380), ("s2", 26379)), "mymaster", 2, None, None, False),
        ),
        (
            f"rediss+sentinel://app:{SECRET_WORD}@[::1]:26379,10.0.0.2:1/cache",
            SentinelAddress(
                (("::1", 26379), ("10.0.0.2", 1)), "cache", 0, "app", SECRET_WORD, True
            ),
        ),
        (
            "redis+sentinel://:p%40ss@s1/my%20master/0",
            SentinelAddress((("s1", 26379),), "my master", 0, None, "p@ss", False),
        ),
    ],
)
def test_sentinel_urls_name_the_sentinels_the_service_and_the_db(
    url: str, address: SentinelAddress
) -> None:
    assert sentinel_address(url) == address


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"redis+sentinel://:{SECRET_WORD}@s1:26379", "names the master's service"),
        (f"redis+sentinel://:{SECRET_WORD}@s1:26379/", "names the master's service"),
        (f"redis+sentinel://:{SECRET_WORD}@s1,:26379/m", "sentinel 2: no host"),
        (f"redis+sentinel://:{SECRET_WORD}@s1:99999/m", "sentinel 1: the port is not a number"),
        (f"redis+sentinel://:{SECRET_WORD}@s1:x/m", "sentinel 1: the port is not a number"),
        (f"redis+sentinel://:{SECRET_WORD}@s1/m/zero", "only a database number"),
        (f"redis+sentinel://:{SECRET_WORD}@s1/m/0/1", "only a database number"),
        (f"redis+sentinel://:{SECRET_WORD}@s1/m?ssl_ca_certs=/x", "takes no query"),
        (f"redis+sentinel://:{SECRET_WORD}@[::1/m", r"sentinel 1: expected \[address\]:port"),
        (f"redis://:{SECRET_WORD}@host:port/0", "the port in the URL is not a number"),
        (f"http://:{SECRET_WORD}@host/0", "must be a redis://"),
        (f"sentinel://:{SECRET_WORD}@host/m", "must be a redis://"),
    ],
)
def test_a_bad_url_is_refused_at_load_naming_the_key_never_the_url(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_url(url)
    said = _refused(url=url)
    assert said.startswith("state.url: ") and problem.replace("\\", "") in said
    assert SECRET_WORD not in said and url not in said


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://cache.example:6380/0",
        "unix:///run/redis.sock",
        "redis+sentinel://s1:26379,s2:26379/mymaster/0",
        "rediss+sentinel://s1/mymaster",
    ],
)
def test_every_kind_of_url_loads(url: str) -> None:
    assert _state(url=url).url.get_secret_value() == url


def test_tls_files_are_read_at_load_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    data = config_dict(
        None,
        state={
            "backend": "redis",
            "url": "rediss://cache.example:6380/0",
            "tls": {"ca_file": "ca.pem", "cert_file": "missing.pem", "key_file": "/nowhere"},
        },
    )
    import yaml

    from proxy.config import parse_config

    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(data), env={}, base_dir=tmp_path)
    said = str(caught.value)
    assert f"state.tls.cert_file: cannot read {tmp_path / 'missing.pem'}" in said
    assert "state.tls.key_file: cannot read /nowhere" in said
    assert "ca_file" not in said
    del data["state"]["tls"]["cert_file"], data["state"]["tls"]["key_file"]
    tls = parse_config(yaml.safe_dump(data), env={}, base_dir=tmp_path).settings.state.tls
    assert tls.ca_file == tmp_path / "ca.pem"


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        (
            {"url": "redis://h:6379/0", "tls": {"ca_file": "/etc/hostname"}},
            "state.tls.ca_file: only used with a rediss://",
        ),
        (
            {"url": "rediss://h:6379/0", "tls": {"cert_file": "/etc/hostname"}},
            "state.tls: cert_file and key_file go together",
        ),
        (
            {"url": "redis://h:6379/0", "sentinel_password": SECRET_WORD},
            "state.sentinel_password: only used with a redis+sentinel://",
        ),
        ({"url": "redis://h:6379/0", "outage_grace": -1}, "state.outage_grace"),
        ({"url": "redis://h:6379/0", "outage_grace": 7200}, "state.outage_grace"),
        ({"url": "redis://h:6379/0", "sentinel_password": 5}, "state.sentinel_password"),
    ],
)
def test_state_mistakes_name_the_key(state: dict[str, Any], problem: str) -> None:
    said = _refused(**state)
    assert problem in said
    assert SECRET_WORD not in said


def test_the_defaults() -> None:
    state = _state(url="redis://h:6379/0", sentinel_password="")
    assert state.outage_grace == 30
    assert state.sentinel_password is None  # ${SENTINEL_PASSWORD:-} unset
    assert (state.tls.ca_file, state.tls.check_hostname) == (None, True)


# --- the client each URL builds (nothing is sent) -----------------------------------------


async def test_a_plain_url_gets_a_bounded_blocking_pool() -> None:
    link = open_link(_state(url="redis://127.0.0.1:1/3", timeout=0.5, max_connections=7))
    pool = link.redis.connection_pool
    assert (pool.max_connections, pool.timeout) == (7, 0.5)  # type: ignore[attr-defined]
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (
        3,
        0.5,
        0.5,
    )
    assert link.sentinel is None
    await link.close()


async def test_a_tls_url_verifies_against_the_configured_ca(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    tls = {"ca_file": str(tmp_path / "ca.pem"), "check_hostname": False}
    link = open_link(_state(url="rediss://127.0.0.1:1/0", tls=tls))
    pool = link.redis.connection_pool
    assert pool.connection_class is SSLConnection
    kwargs = pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == ("required", False)
    await link.close()


async def test_a_sentinel_url_asks_its_sentinels_for_the_master() -> None:
    url = f"rediss+sentinel://:{SECRET_WORD}@127.0.0.1:1,127.0.0.1:2/cache/4"
    link = open_link(_state(url=url, sentinel_password="sentinel-pw", max_connections=5))
    assert link.sentinel is not None
    sentinels = [s.connection_pool.connection_kwargs for s in link.sentinel.sentinels]
    assert [(s["host"], s["port"], s["password"]) for s in sentinels] == [
        ("127.0.0.1", 1, "sentinel-pw"),
        ("127.0.0.1", 2, "sentinel-pw"),
    ]
    pool = link.redis.connection_pool
    assert isinstance(pool, BlockingSentinelPool)
    assert (pool.service_name, pool.max_connections, pool.timeout) == ("cache", 5, 0.25)
    assert pool.connection_class is SentinelManagedSSLConnection
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (4, SECRET_WORD)
    await link.close()
