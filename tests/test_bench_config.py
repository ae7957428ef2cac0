"""`python -m proxy bench --config`: a user's routes, stream vs redirect, against moto on
loopback; the bench config it derives; and each way it refuses, with a message, not a trace."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.bench import ProxyProcess
from proxy.benchplan import PREFIXES, BenchError, plan_bench
from proxy.cli import main
from proxy.config import parse_config
from proxy.routing import Router

from .conftest import S3Objects, build_config, config_dict


def _write(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _bench(tmp_path: Path, config: str, *args: str) -> int:
    out = tmp_path / "out"
    return main(["bench", "--config", config, "--rounds", "1", "--out", str(out), *args])


def _es256_config(s3: S3Objects, tmp_path: Path) -> tuple[dict[str, Any], Any]:
    """A config whose tokens the bench cannot mint: ES256, key in a file beside the config."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    data = config_dict(s3.endpoint)
    data["auth"] = {"algorithms": ["ES256"], "public_key_file": "key.pem"}  # relative
    return data, private


def test_bench_runs_a_configs_routes_both_ways(s3: S3Objects, tmp_path: Path, capsys) -> None:
    # employee-photos redirects without `stable`; admin-exports streams, for admins only.
    config = _write(tmp_path, config_dict(s3.endpoint))
    paths = ["--path", "/photos/42", "--path", "/admin/exports/q4.pdf"]
    assert _bench(tmp_path, config, *paths, "--claim", "role=admin") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    size = len(s3.photo) + len(s3.report)
    stream_first, stream_second = results["stream"]
    redirect_first, redirect_second = results["redirect"]
    assert (stream_first["proxy_bytes"], stream_first["s3_requests"]) == (size, 2)
    assert (redirect_first["proxy_bytes"], redirect_first["s3_direct_bytes"]) == (0, size)
    assert redirect_first["s3_requests"] == 2  # by the client, following the redirects
    assert stream_first["client_bytes"] == redirect_first["client_bytes"] == size
    # A second view: streams are revalidated (304s); redirects come from the browser cache.
    assert (stream_second["proxy_requests"], stream_second["proxy_bytes"]) == (2, 0)
    assert stream_second["s3_requests"] == 2
    assert (redirect_second["proxy_requests"], redirect_second["s3_requests"]) == (0, 0)
    report = (tmp_path / "out" / "report.md").read_text()
    assert f"`/photos/42` ({len(s3.photo) // 1024} KiB)" in report
    assert "employee-photos: the redirect copy uses stable: 3600 (picked by the bench" in report
    assert "admin-exports: the redirect copy uses cache_control: 'private, max-age=3600'" in report
    assert "employee-photos: the stream copy leaves out cache_control" in report
    assert "report:" in capsys.readouterr().out


def test_bench_sends_the_given_token(s3: S3Objects, tmp_path: Path) -> None:
    data, private = _es256_config(s3, tmp_path)
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "exp": now + 3600}, private, algorithm="ES256")
    config = _write(tmp_path, data)
    assert _bench(tmp_path, config, "--path", "/stream/photos/42", "--token", token) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["stream"][0]["proxy_bytes"] == len(s3.photo)


def test_an_s3_that_refuses_is_reported_per_path(s3: S3Objects, tmp_path: Path, capsys) -> None:
    data = config_dict(s3.endpoint)
    data["routes"].append({**data["routes"][1], "name": "gone", "match": "/gone/{employee_id}"})
    data["routes"][-1]["bucket"] = "no-such-bucket"
    paths = ["/stream/photos/42", "/stream/photos/7", "/gone/42"]
    args = [arg for path in paths for arg in ("--path", path)]
    assert _bench(tmp_path, _write(tmp_path, data), *args) == 2
    err = capsys.readouterr().err
    assert "bench: not every path answered, so nothing was measured:" in err
    assert "/stream/photos/42: stream 200; redirect 200" in err
    # moto answers a missing key or bucket with SignatureDoesNotMatch (403) instead of 404 when
    # a presigned URL carries response-content-* parameters (botocore's own URLs alike).
    missing = r"redirect (404|403) from S3 \((NoSuchKey|NoSuchBucket|SignatureDoesNotMatch)\)"
    assert re.search(r"/stream/photos/7: stream 404 from the proxy \(not found\); " + missing, err)
    assert re.search(
        r"/gone/42: stream 502 from the proxy \(storage unavailable\); " + missing, err
    )
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "report.md").exists()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("missing", ["--path", "/photos/42"], "cannot read config file"),
        ("invalid", ["--path", "/photos/42"], "routes[0] (employee-photos).ttl: Input should be"),
        ("valid", ["--path", "/nowhere/1"], "/nowhere/1: no route in the config matches"),
        ("valid", ["--path", "photos/42"], "photos/42: a --path starts with '/'"),
        ("valid", ["--path", "/photos/a%2Fb"], "/photos/a%2Fb: path parameter contains '/'"),
        ("valid", [], "name at least one object to fetch with --path"),
        ("valid", ["--path", "/photos/42", "--claim", "role"], "--claim 'role': expected"),
        ("es256", ["--path", "/photos/42"], "pass --token with a token its issuer signed"),
        ("valid", ["--path", "/admin/exports/q4.pdf"], "403 from the proxy (forbidden)\n(a 401"),
    ],
)
def test_bench_refuses_with_a_message(
    s3: S3Objects, tmp_path: Path, capsys, setup: str, args: list[str], message: str
) -> None:
    data = config_dict(s3.endpoint)
    if setup == "invalid":
        data["routes"][0]["ttl"] = 10**6
    if setup == "es256":
        data = _es256_config(s3, tmp_path)[0]
    config = _write(tmp_path, data) if setup != "missing" else str(tmp_path / "none.yaml")
    assert _bench(tmp_path, config, *args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_config_only_flags_need_a_config(capsys) -> None:
    assert main(["bench", "--path", "/photos/42"]) == 2
    assert "bench: --path goes with --config" in capsys.readouterr().err


def test_a_proxy_that_does_not_start_is_shown_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as caught, ProxyProcess({"routes": []}, tmp_path, os.environ):
        pass
    assert "the proxy did not start (exit status 2); its last output:" in str(caught.value)
    assert "routes: List should have at least 1 item" in str(caught.value)


def test_plan_mounts_each_used_route_twice_and_keeps_first_match_wins(s3: S3Objects) -> None:
    data = config_dict(s3.endpoint)
    special = {**data["routes"][2], "name": "special", "match": "/admin/exports/q4.pdf"}
    special["key"] = "exports/q4.pdf"
    data["routes"].insert(0, special)  # shadows admin-exports for that one path
    data["routes"][3]["rate_limit"] = {"per_client": {"rate": 1, "burst": 1}}
    plan = plan_bench(build_config(data), ["/admin/exports/q4.pdf", "/admin/exports/x y.pdf"])
    assert plan.paths == ("/admin/exports/q4.pdf", "/admin/exports/x%20y.pdf")
    names = [route["name"] for route in plan.config["routes"]]
    assert names == [
        "special/stream",
        "special/redirect",
        "admin-exports/stream",
        "admin-exports/redirect",
    ]
    bench = parse_config(yaml.safe_dump(plan.config), env={})
    router = Router([route.pattern for route in bench.routes])
    assert plan.methods == ("stream", "redirect")  # no cloudfront section, no third copy
    for method in plan.methods:
        found = router.match(PREFIXES[method] + "/admin/exports/q4.pdf")
        assert found is not None
        assert bench.routes[found.index].name == f"special/{method}"
        assert bench.routes[found.index].settings.delivery == method
    assert all(route.settings.rate_limit is None for route in bench.routes)
    assert bench.settings.metrics.path is not None
    assert (bench.settings.listen.host, bench.settings.listen.port) == ("127.0.0.1", 0)
    assert plan.needs_token
    assert "rate limits are lifted: the bench sends its requests back to back" in plan.notes


def test_plan_keeps_a_routes_own_stable_and_inlines_its_public_key(
    s3: S3Objects, tmp_path: Path
) -> None:
    data, _ = _es256_config(s3, tmp_path)
    data["auth"]["public_key_file"] = str(tmp_path / "key.pem")
    plan = plan_bench(build_config(data), ["/stable/photos/42", "/public/42"])
    routes = {route["name"]: route for route in plan.config["routes"]}
    assert routes["stable-photos/redirect"]["stable"] == 3600
    assert "stable" not in routes["stable-photos/stream"]
    assert "public_key_file" not in plan.config["auth"]
    assert plan.config["auth"]["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert not any("stable-photos: the redirect copy uses stable" in n for n in plan.notes)
    assert not plan_bench(build_config(data), ["/public/42"]).needs_token


def test_plan_adds_a_cloudfront_copy_when_the_config_signs_for_cloudfront(
    s3: S3Objects, tmp_path: Path
) -> None:
    from .cfkeys import cloudfront_config, private_pem, rsa_key

    (tmp_path / "cf.pem").write_bytes(private_pem(rsa_key()))
    os.chmod(tmp_path / "cf.pem", 0o600)
    data = cloudfront_config(Path("cf.pem"), s3.endpoint)  # relative to the config's folder
    data["routes"][0]["disposition"] = "attachment"
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(data))
    from proxy.config import load_config

    config = load_config(path)
    plan = plan_bench(config, ["/photos/42", "/cdn/albums/trip/1.jpg"], tmp_path)
    assert plan.methods == ("stream", "redirect", "cloudfront")
    routes = {route["name"]: route for route in plan.config["routes"]}
    copy = routes["employee-photos/cloudfront"]
    assert (copy["delivery"], copy["match"]) == (
        "cloudfront",
        "/__bench/cloudfront/photos/{employee_id}",
    )
    assert copy["stable"] == 3600 and "disposition" not in copy and "cache_control" not in copy
    assert "cookie_scope" not in routes["cdn-albums/cloudfront"]
    assert "cookie_scope" not in routes["cdn-albums/stream"]
    assert routes["cdn-albums/stream"]["delivery"] == "stream"
    assert plan.config["cloudfront"]["private_key"] == str(tmp_path / "cf.pem")
    assert any(
        "employee-photos: the cloudfront copy leaves out cache_control, disposition" in note
        for note in plan.notes
    )
    assert any(
        "cdn-albums: the cloudfront copy signs each URL instead of cookies" in n for n in plan.notes
    )
    bench = parse_config(yaml.safe_dump(plan.config), env={})  # loads from any directory
    assert bench.cloudfront is not None


def test_bench_runs_a_cloudfront_route_three_ways(s3: S3Objects, tmp_path: Path) -> None:
    """A config with a cloudfront section: its distribution (here the demo's stand-in edge,
    not a CDN) is benched as the third method; the S3 requests it makes are not seen."""
    from proxy.demo import start_edge

    edge = start_edge(tmp_path, s3.endpoint, bucket="hr-private")
    try:
        data = config_dict(s3.endpoint)
        data["cloudfront"] = {
            "domain": edge.origin,
            "key_pair_id": "KDEMOSTANDIN01",
            "private_key": str(edge.key_file),
        }
        config = _write(tmp_path, data)
        assert _bench(tmp_path, config, "--path", "/photos/42", "--engine", "builtin") == 0
    finally:
        edge.thread.stop()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    first, second = results["cloudfront"]
    assert (first["proxy_requests"], first["proxy_bytes"], first["edge_requests"]) == (1, 0, 1)
    assert first["edge_bytes"] == len(s3.photo) and first["s3_unseen"]
    assert second["proxy_requests"] == 0  # the stable 302 is cached
    report = (tmp_path / "out" / "report.md").read_text()
    assert "0 + CloudFront's (not seen from here)" in report
