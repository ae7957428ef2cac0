"""The CloudFront signing core: canned URLs byte for byte botocore's, custom-policy cookies,
ECDSA P-256, SHA-256, wildcards and scopes. Every signature is checked with the PUBLIC key
(cryptography, or the openssl command AWS documents) or against botocore, never with our own
signer."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from botocore.signers import CloudFrontSigner
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from proxy.cloudfront import Signer, SigningKey, compile_scope, object_path, resource_matches
from proxy.cloudfront.keys import KeyProblem, load_private_key, load_public_key
from proxy.cloudfront.policy import decode, encode
from proxy.routing import TemplateError, compile_template

from .cfkeys import KEY_ID, ec_key, private_pem, public_pem, rsa_key

EXPIRES = 1_767_290_400
# CloudFront's documented default hash: the one under test, not a choice of ours.
SHA1 = hashes.SHA1()  # noqa: S303
ORIGIN = "https://cdn.example.com"


def _cloudfront_b64decode(text: str) -> bytes:
    """Undo CloudFront's alphabet by the documented substitution, independently of ours."""
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


def _documented_canned_policy(url: str, expires: int) -> bytes:
    """The canned policy exactly as AWS's developer guide prints it (no whitespace)."""
    return (
        '{"Statement":[{"Resource":"' + url + '","Condition":{"DateLessThan":'
        '{"AWS:EpochTime":' + str(expires) + "}}}]}"
    ).encode()


def _rsa_verify(key: rsa.RSAPrivateKey, message: bytes, signature: bytes, digest: Any) -> None:
    key.public_key().verify(signature, message, padding.PKCS1v15(), digest)


def _botocore_url(key: rsa.RSAPrivateKey, url: str, expires: int) -> str:
    def rsa_signer(message: bytes) -> bytes:
        return key.sign(message, padding.PKCS1v15(), SHA1)

    signer = CloudFrontSigner(KEY_ID, rsa_signer)
    return str(
        signer.generate_presigned_url(url, date_less_than=datetime.fromtimestamp(expires, UTC))
    )


def _signer(key: Any = None, hash_name: Any = "SHA1") -> Signer:
    return Signer(ORIGIN, SigningKey(KEY_ID, key or rsa_key()), (), hash_name)


@pytest.mark.parametrize(
    "key",
    [
        "employees/42/photo.jpg",
        "albums/trip 2024/été ~ (1)+[x].jpg",
        'odd/we"ird; name=x?&y#z%.pdf',
    ],
)
def test_a_canned_url_is_byte_for_byte_botocores(key: str) -> None:
    url = ORIGIN + object_path(key)
    ours = _signer().signed_url(url, EXPIRES)
    assert ours == _botocore_url(rsa_key(), url, EXPIRES)


def test_a_canned_url_on_a_url_with_a_query_matches_botocore() -> None:
    url = ORIGIN + "/image.jpg?color=red&size=medium"
    assert _signer().signed_url(url, EXPIRES) == _botocore_url(rsa_key(), url, EXPIRES)


def test_a_canned_url_verifies_with_the_public_key_over_the_documented_policy() -> None:
    url = ORIGIN + object_path("employees/42/photo.jpg")
    signed = _signer().signed_url(url, EXPIRES)
    base, _, query = signed.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    assert base == url
    assert list(params) == ["Expires", "Signature", "Key-Pair-Id"]
    assert params["Expires"] == str(EXPIRES)
    assert params["Key-Pair-Id"] == KEY_ID
    assert not set(params["Signature"]) & set("+=/")
    signature = _cloudfront_b64decode(params["Signature"])
    _rsa_verify(rsa_key(), _documented_canned_policy(url, EXPIRES), signature, SHA1)
    with pytest.raises(InvalidSignature):  # the test can fail: another URL does not verify
        other = _documented_canned_policy(url.replace("42", "43"), EXPIRES)
        _rsa_verify(rsa_key(), other, signature, SHA1)


def test_cookies_carry_a_custom_policy_that_verifies_with_the_public_key() -> None:
    resource = ORIGIN + "/albums/trip/*"
    cookies = _signer().signed_cookies(resource, EXPIRES)
    values = dict(cookies.values)
    assert list(values) == ["CloudFront-Policy", "CloudFront-Signature", "CloudFront-Key-Pair-Id"]
    assert values["CloudFront-Key-Pair-Id"] == KEY_ID
    policy = _cloudfront_b64decode(values["CloudFront-Policy"])
    assert json.loads(policy) == {
        "Statement": [
            {"Resource": resource, "Condition": {"DateLessThan": {"AWS:EpochTime": EXPIRES}}}
        ]
    }
    # botocore builds the same custom policy text for the same resource and expiry
    reference = CloudFrontSigner(KEY_ID, lambda m: b"").build_policy(
        resource, datetime.fromtimestamp(EXPIRES, UTC)
    )
    assert policy == reference.encode()
    signature = _cloudfront_b64decode(values["CloudFront-Signature"])
    _rsa_verify(rsa_key(), policy, signature, SHA1)
    assert (cookies.resource, cookies.expires_at) == (resource, EXPIRES)


def test_an_ecdsa_p256_url_verifies_with_the_public_key_and_is_stable() -> None:
    key = ec_key()
    signer = _signer(key)
    url = ORIGIN + "/employees/42/photo.jpg"
    signed = signer.signed_url(url, EXPIRES)
    params = dict(parse_qsl(urlsplit(signed).query))
    signature = _cloudfront_b64decode(params["Signature"])
    key.public_key().verify(signature, _documented_canned_policy(url, EXPIRES), ec.ECDSA(SHA1))
    # RFC 6979: the same URL in every process, so a stable window's URL is one URL
    assert signer.signed_url(url, EXPIRES) == signed


def test_an_ecdsa_signature_is_what_the_documented_openssl_command_verifies(
    tmp_path: Path,
) -> None:
    """AWS documents `openssl sha1 -sign private_key.pem` for RSA 2048 or ECDSA 256 keys:
    the openssl command line accepts our ECDSA and RSA signatures with the public key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl command on this machine")
    for name, key in (("ec", ec_key()), ("rsa", rsa_key())):
        cookies = _signer(key).signed_cookies(ORIGIN + "/albums/*", EXPIRES)
        values = dict(cookies.values)
        (tmp_path / "policy").write_bytes(_cloudfront_b64decode(values["CloudFront-Policy"]))
        (tmp_path / "sig").write_bytes(_cloudfront_b64decode(values["CloudFront-Signature"]))
        (tmp_path / "pub.pem").write_bytes(public_pem(key))
        result = subprocess.run(
            [
                openssl,
                "dgst",
                "-sha1",
                "-verify",
                tmp_path / "pub.pem",
                "-signature",
                tmp_path / "sig",
                tmp_path / "policy",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0 and "Verified OK" in result.stdout, (name, result)


def test_sha256_adds_the_documented_parameter_and_cookie() -> None:
    signer = _signer(hash_name="SHA256")
    url = ORIGIN + "/employees/42/photo.jpg"
    params = dict(parse_qsl(urlsplit(signer.signed_url(url, EXPIRES)).query))
    assert params["Hash-Algorithm"] == "SHA256"
    signature = _cloudfront_b64decode(params["Signature"])
    _rsa_verify(rsa_key(), _documented_canned_policy(url, EXPIRES), signature, hashes.SHA256())
    with pytest.raises(InvalidSignature):
        _rsa_verify(rsa_key(), _documented_canned_policy(url, EXPIRES), signature, SHA1)
    cookies = dict(signer.signed_cookies(ORIGIN + "/a/*", EXPIRES).values)
    assert cookies["CloudFront-Hash-Algorithm"] == "SHA256"


def test_cloudfronts_base64_alphabet() -> None:
    data = bytes([0xFB, 0xFF, 0xBF, 0xFE])  # standard base64: +/+/ then padding
    assert base64.b64encode(data) == b"+/+//g=="
    assert encode(data) == "-~-~~g__"
    assert decode("-~-~~g__") == data
    with pytest.raises(ValueError):
        decode("not/base64+")


@pytest.mark.parametrize(
    ("resource", "url", "covered"),
    [
        ("https://cdn.example.com/albums/a/*", "https://cdn.example.com/albums/a/1.jpg", True),
        ("https://cdn.example.com/albums/a/*", "https://cdn.example.com/albums/a/x/y.jpg", True),
        ("https://cdn.example.com/albums/a/*", "https://cdn.example.com/albums/ab/1.jpg", False),
        ("https://cdn.example.com/albums/a/*", "https://cdn.example.com/albums/b/1.jpg", False),
        ("https://cdn.example.com/a/?.jpg", "https://cdn.example.com/a/1.jpg", True),
        ("https://cdn.example.com/a/?.jpg", "https://cdn.example.com/a/12.jpg", False),
        ("https://cdn.example.com/A/*", "https://cdn.example.com/a/1.jpg", False),
        ("http*://cdn.example.com/a/*", "https://cdn.example.com/a/1.jpg", True),
        ("https://cdn.example.com/a.b", "https://cdn.example.com/axb", False),
    ],
)
def test_a_resource_wildcard_covers_what_cloudfront_says(
    resource: str, url: str, covered: bool
) -> None:
    assert resource_matches(resource, url) is covered


def test_a_value_in_a_cookie_scope_is_a_character_never_a_wildcard() -> None:
    scope = compile_scope(
        compile_template("albums/{album}/*"), compile_template("albums/{album}/{name}"), frozenset()
    )
    assert scope.path_for("albums/trip/1.jpg") == "/albums/trip/*"
    widened = scope.path_for("albums/*/x.jpg")
    assert widened == "/albums/%2A/*"
    assert not resource_matches(ORIGIN + widened, ORIGIN + "/albums/other/1.jpg")
    assert scope.path_for("albums/a?b c/1.jpg") == "/albums/a%3Fb%20c/*"
    # the value is encoded as the object's key is: the scope covers its own objects
    assert resource_matches(
        ORIGIN + scope.path_for("albums/été 1/photo 1.jpg"),
        ORIGIN + object_path("albums/été 1/photo 1.jpg"),
    )


def test_a_scope_reads_its_values_back_from_the_key() -> None:
    key = compile_template("users/{claims.sub}/{path}")
    mine = compile_scope(compile_template("users/{claims.sub}/*"), key, frozenset({"path"}))
    assert mine.path_for("users/alice/albums/trip/1.jpg") == "/users/alice/*"
    deep = compile_scope(compile_template("users/{claims.sub}/{path}"), key, frozenset({"path"}))
    assert deep.path_for("users/alice/a/b.jpg") == "/users/alice/a/b.jpg"
    with pytest.raises(TemplateError, match="wildcard right beside a value"):
        # a/b.jpg's cookies would open a/b.jpg.anything too
        compile_scope(compile_template("users/{claims.sub}/{path}*"), key, frozenset({"path"}))
    twice = compile_scope(
        compile_template("{id}/*"), compile_template("{id}/{id}.jpg"), frozenset()
    )
    assert twice.path_for("7/7.jpg") == "/7/*"
    with pytest.raises(ValueError):
        twice.path_for("7/8.jpg")


@pytest.mark.parametrize(
    ("scope", "says"),
    [
        ("albums/{other}/*", "{other} is not in the route's key"),
        ("users/{claims.sub}/*", "{claims.sub} is not in the route's key"),
        ("photos/{album}/*", "does not cover the route's key"),
        ("albums/{album}/{name}.png", "does not cover the route's key"),
    ],
)
def test_a_scope_that_is_not_part_of_its_key_is_refused(scope: str, says: str) -> None:
    with pytest.raises(TemplateError) as refused:
        compile_scope(
            compile_template(scope), compile_template("albums/{album}/{name}"), frozenset()
        )
    assert says in str(refused.value)


@pytest.mark.parametrize(
    ("pem", "says"),
    [
        (lambda: private_pem(rsa_key(1024)), "RSA key of 1024 bits"),
        (lambda: private_pem(rsa_key(4096)), "RSA key of 4096 bits"),
        (lambda: private_pem(ec_key(curve="P-384")), "curve secp384r1"),
        (
            lambda: b"-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n",
            "not a PEM",
        ),
        (lambda: public_pem(rsa_key()), "not a PEM private key"),
    ],
    ids=["rsa1024", "rsa4096", "p384", "garbage", "public"],
)
def test_keys_cloudfront_refuses_are_named_without_their_material(pem: Any, says: str) -> None:
    material = pem()
    with pytest.raises(KeyProblem) as refused:
        load_private_key(material)
    assert says in str(refused.value)
    body = b"".join(material.splitlines()[1:-1]).decode()
    assert body[:16] not in str(refused.value)


def test_both_kinds_and_both_pem_forms_load() -> None:
    for key in (rsa_key(), ec_key()):
        for fmt in ("pkcs8", "traditional"):
            assert load_private_key(private_pem(key, fmt)) is not None
        assert load_public_key(public_pem(key)) is not None


def test_a_key_never_shows_its_material() -> None:
    key = SigningKey(KEY_ID, rsa_key())
    signer = Signer(ORIGIN, key)
    secret_number = str(rsa_key().private_numbers().d)[:12]
    for text in (repr(key), str(key), repr(signer), repr(signer.trusted)):
        assert secret_number not in text
        assert "PRIVATE" not in text
    assert repr(key) == f"SigningKey({KEY_ID}, RSA 2048)"


def test_cookie_headers_are_secure_httponly_lax_for_the_whole_path() -> None:
    cookies = _signer().signed_cookies(ORIGIN + "/albums/trip/*", EXPIRES)
    headers = cookies.set_cookie_headers("example.com")
    assert [header.split("=", 1)[0] for header in headers] == [
        "CloudFront-Policy",
        "CloudFront-Signature",
        "CloudFront-Key-Pair-Id",
    ]
    for header in headers:
        attributes = header.split("; ")[1:]
        assert attributes == ["Domain=example.com", "Path=/", "Secure", "HttpOnly", "SameSite=Lax"]
    assert all("Domain" not in header for header in cookies.set_cookie_headers(None))
    assert headers[2].startswith(f"CloudFront-Key-Pair-Id={KEY_ID};")
