"""`python -m proxy cloudfront explain`: the diagnosis a bare AccessDenied never gives. The
signed material comes from botocore's CloudFrontSigner or is built by hand."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from proxy.cli import main

from .cfkeys import KEY_ID, cloudfront_config, private_pem, rsa_key, write_key
from .conftest import config_dict

NOW = 1_767_000_000
URL = "https://cdn.example.com/employees/42/photo.jpg"
SHA1 = hashes.SHA1()  # noqa: S303 - CloudFront's documented default hash


def _sign(message: bytes) -> bytes:
    return rsa_key().sign(message, padding.PKCS1v15(), SHA1)


def _signed_url(url: str = URL, expires: int = NOW + 300, key_id: str = KEY_ID) -> str:
    signer = CloudFrontSigner(key_id, _sign)
    when = datetime.fromtimestamp(expires, UTC)
    return str(signer.generate_presigned_url(url, date_less_than=when))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().replace("+", "-").replace("=", "_").replace("/", "~")


def _cookies(resource: str, expires: int = NOW + 300) -> str:
    when = datetime.fromtimestamp(expires, UTC)
    policy = CloudFrontSigner(KEY_ID, _sign).build_policy(resource, when).encode()
    return (
        f"Cookie: CloudFront-Policy={_b64(policy)}; CloudFront-Signature={_b64(_sign(policy))}; "
        f"CloudFront-Key-Pair-Id={KEY_ID}"
    )


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    key = write_key(tmp_path, "cf.pem", private_pem(rsa_key()))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cloudfront_config(key)))
    return path


def _explain(config: Path, capsys: Any, *args: str) -> tuple[int, str]:
    code = main(["cloudfront", "explain", "--config", str(config), "--at", str(NOW), *args])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_a_good_url_is_served(config_path: Path, capsys: Any) -> None:
    code, text = _explain(config_path, capsys, _signed_url())
    assert code == 0
    assert text.startswith("CloudFront would serve this request (signed URL).")
    assert f"key {KEY_ID} (RSA 2048), hashed with SHA1" in text


@pytest.mark.parametrize(
    ("signed", "reason"),
    [
        (lambda: _signed_url(expires=NOW - 5), "  - expired: DateLessThan"),
        (lambda: _signed_url().replace("/42/", "/7/"), "  - bad signature: key K2JCJMDEHXQW5F"),
        (lambda: _signed_url(key_id="KROTATED00001"), "  - wrong key id: KROTATED00001 is not"),
        (lambda: _signed_url().split("&Key-Pair-Id")[0], "with MissingKey, because:"),
    ],
    ids=["expired", "tampered", "wrong-key-id", "missing-key"],
)
def test_each_refusal_is_said_in_words(
    config_path: Path, capsys: Any, signed: Any, reason: str
) -> None:
    code, text = _explain(config_path, capsys, signed())
    assert code == 1
    assert text.startswith("CloudFront would refuse this request (signed URL) with ")
    assert reason in text


def test_cookies_are_checked_against_the_requested_url(config_path: Path, capsys: Any) -> None:
    cookies = _cookies("https://cdn.example.com/albums/trip/*")
    code, text = _explain(
        config_path, capsys, cookies, "--url", "https://cdn.example.com/albums/work/1.jpg"
    )
    assert code == 1
    assert "  - wildcard scope: the policy's Resource https://cdn.example.com/albums/trip/* " in (
        text
    )
    code, text = _explain(config_path, capsys, cookies)
    assert code == 0
    assert "no --url given" in text


def test_a_policy_for_the_whole_distribution_is_pointed_out(config_path: Path, capsys: Any) -> None:
    code, text = _explain(config_path, capsys, _cookies("https://cdn.example.com/*"), "--url", URL)
    assert code == 0
    assert "covers every object of the distribution" in text


def test_another_distributions_url_is_noted(config_path: Path, capsys: Any) -> None:
    _, text = _explain(config_path, capsys, _signed_url("https://other.example.net/a.jpg"))
    assert "the URL is for other.example.net; the configured distribution is cdn.example.com" in (
        text
    )


def test_a_config_without_cloudfront_says_so(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict()))
    code, text = _explain(path, capsys, _signed_url())
    assert code == 2
    assert "has no cloudfront section" in text
