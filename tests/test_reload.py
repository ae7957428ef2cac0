"""Live reload: SIGHUP or `python -m proxy reload` to a real server process, and the reload
step itself on the in-process proxy. A valid config takes effect for new requests while
requests in flight finish on the old one; an invalid one changes nothing and is logged with
its key path; settings a reload cannot apply are named."""

from __future__ import annotations

import copy
import http.client
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, parse_config
from proxy.reload import (
    PidFileError,
    reload_gateway,
    remove_pid_file,
    restart_only_changes,
    signal_reload,
    write_pid_file,
)

from .conftest import HUGE_SIZE, S3Objects, bearer, build_config, config_dict, make_token
from .running import REPO, RunningProxy, free_port, running_proxy

ADMIN = make_token("root", role="admin", ttl=3600)
AUDITOR = make_token("eve", role="auditor", ttl=3600)
HUGE = "/admin/exports/huge.bin"
SMALL = "/admin/exports/q4.pdf"
ADMIN_EXPORTS = 2  # index of the admin-exports route in conftest's BASE_CONFIG


def _auditors_only(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with admin-exports open to role auditor instead of admin."""
    changed = copy.deepcopy(data)
    route = changed["routes"][ADMIN_EXPORTS]
    assert route["name"] == "admin-exports"
    route["access"] = {"claims": {"role": "auditor"}}
    return changed


def _start_download(proxy: RunningProxy) -> tuple[http.client.HTTPConnection, Any, int]:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    conn.request("GET", HUGE, headers={"Authorization": f"Bearer {ADMIN}"})
    response = conn.getresponse()
    assert response.status == 200
    return conn, response, len(response.read(1024 * 1024))


def _finish_download(response: Any, received: int) -> int:
    while chunk := response.read(1024 * 1024):
        received += len(chunk)
    return received


# --- over a real server process ------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["SIGHUP", "reload command"])
def test_reload_changes_access_for_new_requests_while_a_slow_download_finishes(
    s3: S3Objects, tmp_path: Path, trigger: str
) -> None:
    data = config_dict(s3.endpoint, listen={"pid_file": "proxy.pid"})
    with running_proxy(data, tmp_path) as proxy:
        assert proxy.get(SMALL, AUDITOR)[0] == 403
        conn, response, received = _start_download(proxy)  # on the old config, then stalled
        try:
            proxy.write_config(_auditors_only(data))
            if trigger == "SIGHUP":
                proxy.signal(signal.SIGHUP)
            else:
                result = subprocess.run(
                    [sys.executable, "-m", "proxy", "reload", "--config", str(proxy.config)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    cwd=REPO,
                )
                assert result.returncode == 0, result.stderr
                assert f"pid {proxy.process.pid}" in result.stdout
            proxy.wait_for("config reloaded")
            assert proxy.get(SMALL, ADMIN)[0] == 403  # new requests: the new rule
            assert proxy.get(SMALL, AUDITOR) == (200, s3.report)
            assert _finish_download(response, received) == HUGE_SIZE  # the old one: all of it
        finally:
            conn.close()
        assert (tmp_path / "proxy.pid").read_text().strip() == str(proxy.process.pid)
        proxy.signal(signal.SIGTERM)
        assert proxy.process.wait(timeout=30) == 0
    assert not (tmp_path / "proxy.pid").exists()  # removed on the way out


def test_an_invalid_reload_keeps_the_old_config_and_logs_the_key_path(
    s3: S3Objects, tmp_path: Path
) -> None:
    data = config_dict(s3.endpoint, listen={"pid_file": "proxy.pid"})
    with running_proxy(data, tmp_path) as proxy:
        broken = _auditors_only(data)
        broken["routes"][ADMIN_EXPORTS]["delivery"] = "teleport"
        proxy.write_config(broken)
        # The command validates first, with the caller's environment, and does not signal.
        result = subprocess.run(
            [sys.executable, "-m", "proxy", "reload", "--config", str(proxy.config)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert result.returncode == 2
        assert "routes[2] (admin-exports).delivery" in result.stderr
        # A signal makes the server itself validate it, and refuse it.
        proxy.signal(signal.SIGHUP)
        output = proxy.wait_for("config reload refused")
        assert "still serving the previous config" in output
        assert "routes[2] (admin-exports).delivery" in output
        assert proxy.get(SMALL, ADMIN) == (200, s3.report)
        assert proxy.get(SMALL, AUDITOR)[0] == 403
        assert "config reloaded" not in proxy.output
        # Fixed, it goes through.
        proxy.write_config(_auditors_only(data))
        proxy.signal(signal.SIGHUP)
        proxy.wait_for("config reloaded")
        assert proxy.get(SMALL, AUDITOR) == (200, s3.report)


def test_settings_that_need_a_restart_are_named(s3: S3Objects, tmp_path: Path) -> None:
    data = config_dict(s3.endpoint)
    with running_proxy(data, tmp_path) as proxy:
        changed = _auditors_only(data)
        changed["listen"] = {**data["listen"], "port": free_port(), "workers": 2}
        changed["s3"] = {**data["s3"], "max_connections": 3}
        changed["limits"] = {"header_timeout": 3}
        proxy.write_config(changed)
        proxy.signal(signal.SIGHUP)
        output = proxy.wait_for("config reloaded")
        for key in ("listen.port", "listen.workers", "s3.max_connections", "limits.header_timeout"):
            assert f"config reload: {key} changed but takes effect only after a restart" in output
        assert "listen.host changed" not in output
        # Still on the old port; the rest of the new config applies.
        assert proxy.get(SMALL, AUDITOR) == (200, s3.report)


def test_with_two_workers_sighup_reloads_every_worker(s3: S3Objects, tmp_path: Path) -> None:
    data = config_dict(s3.endpoint, listen={"workers": 2, "shutdown_grace": 5})
    with running_proxy(data, tmp_path) as proxy:
        children = Path(f"/proc/{proxy.process.pid}/task/{proxy.process.pid}/children")
        workers = set(children.read_text().split())
        assert len(workers) == 2
        proxy.write_config(_auditors_only(data))
        proxy.signal(signal.SIGHUP)
        output = proxy.wait_for("config reloaded", count=2)
        reloaded = {
            line.split("(pid ")[1].split(")")[0]
            for line in output.splitlines()
            if "config reloaded" in line
        }
        assert reloaded == workers
        for _ in range(10):  # whichever worker the kernel picks
            assert proxy.get(SMALL, ADMIN)[0] == 403
        proxy.signal(signal.SIGTERM)
        assert proxy.process.wait(timeout=30) == 0


# --- the reload step, in process -------------------------------------------------------------


async def test_reload_swaps_the_handler_and_reports_each_outcome(
    proxy: Any, s3: S3Objects, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = config_dict(s3.endpoint)
    client = await proxy(data)
    gateway = client.server.gateway
    outcomes: list[str] = []
    gateway.on_reload = outcomes.append
    path = tmp_path / "config.yaml"
    download = await client.get(HUGE, headers=bearer(ADMIN))
    assert download.status == 200
    received = len(await download.content.readexactly(1024 * 1024))

    path.write_text(yaml.safe_dump(_auditors_only(data)))
    assert reload_gateway(gateway, path) == "ok"
    assert (await client.get(SMALL, headers=bearer(ADMIN))).status == 403
    assert (await client.get(SMALL, headers=bearer(AUDITOR))).status == 200

    path.write_text("routes: [")
    with caplog.at_level(logging.ERROR, logger="proxy.reload"):
        assert reload_gateway(gateway, path) == "invalid"
    assert "invalid YAML" in caplog.text
    assert (await client.get(SMALL, headers=bearer(AUDITOR))).status == 200

    def broken(config: object) -> None:
        raise RuntimeError("cannot build")

    gateway.reload = broken  # our own seam: building the new handler fails
    path.write_text(yaml.safe_dump(data))
    assert reload_gateway(gateway, path) == "error"
    assert (await client.get(SMALL, headers=bearer(AUDITOR))).status == 200
    assert outcomes == ["ok", "invalid", "error"]

    while chunk := await download.content.read(1024 * 1024):
        received += len(chunk)
    assert received == HUGE_SIZE
    assert gateway.streams.in_use == 0


async def test_reload_keeps_the_stream_count_and_applies_the_new_cap(
    proxy: Any, s3: S3Objects, tmp_path: Path
) -> None:
    data = config_dict(s3.endpoint)
    client = await proxy(data)
    gateway = client.server.gateway
    download = await client.get(HUGE, headers=bearer(ADMIN))
    await download.content.readexactly(64 * 1024)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**data, "limits": {"max_streams": 1}}))
    assert reload_gateway(gateway, path) == "ok"
    # The stream started before the reload still holds the one slot.
    refused = await client.get(SMALL, headers=bearer(ADMIN))
    assert refused.status == 503
    download.close()


def test_restart_only_changes_name_each_key() -> None:
    old = build_config(config_dict("http://127.0.0.1:9000"))
    same = build_config(config_dict("http://127.0.0.1:9000"))
    assert restart_only_changes(old.settings, same.settings) == []
    new = build_config(
        config_dict(
            "http://127.0.0.1:9001",
            listen={"port": 81, "drain_delay": 5, "shutdown_grace": 1},
            s3={"redirect_cache_control": "no-store"},
            auth={"jwks": {"timeout": 1}},
            limits={"max_headers": 100, "max_streams": 3},
            state={"key_prefix": "other:", "outage_grace": 5, "when_down": {"limits": "closed"}},
        )
    )
    assert restart_only_changes(old.settings, new.settings) == [
        "listen.port",
        "s3.endpoint_url",
        "auth.jwks.timeout",
        "limits.max_headers",
        "state.key_prefix",
    ]


# --- the pid file ----------------------------------------------------------------------------


def test_pid_file_is_resolved_against_the_config_file_and_checked(tmp_path: Path) -> None:
    data = config_dict(listen={"pid_file": "run/proxy.pid"})
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(data), env={}, base_dir=tmp_path)
    assert caught.value.problems[0].startswith(
        f"listen.pid_file: directory {tmp_path / 'run'} does not exist"
    )
    (tmp_path / "run").mkdir()
    config = parse_config(yaml.safe_dump(data), env={}, base_dir=tmp_path)
    assert config.settings.listen.pid_file == tmp_path / "run" / "proxy.pid"
    assert build_config(config_dict()).settings.listen.pid_file is None


def test_pid_file_round_trip_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "proxy.pid"
    with pytest.raises(PidFileError, match="cannot read the pid file"):
        signal_reload(path)
    write_pid_file(path)
    assert path.read_text() == f"{os.getpid()}\n"
    remove_pid_file(path)
    assert not path.exists()
    path.write_text("12x\n")
    with pytest.raises(PidFileError, match="does not hold a process id"):
        signal_reload(path)
    path.write_text("0\n")  # kill(0) would signal this whole process group
    with pytest.raises(PidFileError, match="does not hold a process id"):
        signal_reload(path)
    with pytest.raises(PidFileError, match="cannot write"):
        write_pid_file(tmp_path / "missing" / "proxy.pid")
    # A stale file naming some other program: SIGHUP would kill it, so it is not sent.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text(f"{other.pid}\n")
        with pytest.raises(PidFileError, match="is not the proxy"):
            signal_reload(path)
        assert other.poll() is None
        remove_pid_file(path)  # not ours: left alone
        assert path.exists()
    finally:
        other.kill()
        other.wait()
    with pytest.raises(PidFileError, match="is stale"):
        signal_reload(path)


def test_reload_command_without_a_pid_file_says_what_to_set(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict()))
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "reload", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "listen.pid_file is not set" in result.stderr


async def test_a_reload_that_changes_the_token_sources_takes_effect(
    proxy: Any, s3: S3Objects, tmp_path: Path
) -> None:
    """The sources' plan is made once per config: the reloaded config's is the one used."""
    data = config_dict(s3.endpoint)
    client = await proxy(data)
    assert (await client.get(SMALL, headers=bearer(ADMIN))).status == 200
    changed = copy.deepcopy(data)
    changed["auth"]["sources"] = [{"header": "X-Token"}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(changed))
    assert reload_gateway(client.server.gateway, path) == "ok"
    assert (await client.get(SMALL, headers=bearer(ADMIN))).status == 401
    assert (await client.get(SMALL, headers={"X-Token": ADMIN})).status == 200
