"""Judging signed URLs and cookies as CloudFront documents it, with each refusal in words.
The signed material comes from botocore's CloudFrontSigner (or is built by hand from the
documented format), so the verifier is checked independently of our signer."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from proxy.cloudfront import VerifyingKey, from_request, verify

from .cfkeys import KEY_ID, OTHER_ID, rsa_key

NOW = 1_767_000_000
LATER = NOW + 600
URL = "https://cdn.example.com/employees/42/photo.jpg"
SHA1 = hashes.SHA1()  # noqa: S303 - CloudFront's documented default hash


def _rsa_signer(seed: int = 0) -> Any:
    def sign(message: bytes) -> bytes:
        return rsa_key(2048, seed).sign(message, padding.PKCS1v15(), SHA1)

    return sign


def _botocore(key_id: str = KEY_ID, seed: int = 0) -> CloudFrontSigner:
    return CloudFrontSigner(key_id, _rsa_signer(seed))


def _when(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _canned(url: str = URL, expires: int = LATER, key_id: str = KEY_ID, seed: int = 0) -> str:
    return str(_botocore(key_id, seed).generate_presigned_url(url, date_less_than=_when(expires)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().replace("+", "-").replace("=", "_").replace("/", "~")


def _cookie_header(resource: str, expires: int = LATER, key_id: str = KEY_ID, **extra: Any) -> str:
    signer = _botocore(key_id)
    starts = extra.get("starts")
    policy = signer.build_policy(
        resource,
        _when(expires),
        date_greater_than=_when(starts) if starts else None,
        ip_address=extra.get("ip"),
    ).encode()
    signature = _rsa_signer()(policy)
    return (
        f"theme=dark; CloudFront-Policy={_b64(policy)}; "
        f"CloudFront-Signature={_b64(signature)}; CloudFront-Key-Pair-Id={key_id}"
    )


TRUSTED = {
    KEY_ID: VerifyingKey(KEY_ID, rsa_key().public_key()),
    OTHER_ID: VerifyingKey(OTHER_ID, rsa_key(2048, 1).public_key()),
}


def _judge(url: str, cookies: str | None = None, now: float = NOW, **kwargs: Any) -> Any:
    return verify(from_request(url, cookies), kwargs.pop("trusted", TRUSTED), now, **kwargs)


def test_a_canned_url_signed_by_botocore_is_accepted() -> None:
    verdict = _judge(_canned())
    assert verdict.accepted, verdict.refusals
    assert any("canned policy" in fact for fact in verdict.facts)


def test_custom_policy_cookies_are_accepted_for_what_their_wildcard_covers() -> None:
    cookies = _cookie_header("https://cdn.example.com/albums/trip/*")
    assert _judge("https://cdn.example.com/albums/trip/1.jpg", cookies).accepted
    assert _judge("https://cdn.example.com/albums/trip/deep/2.jpg?v=1", cookies).accepted
    refused = _judge("https://cdn.example.com/albums/other/1.jpg", cookies)
    assert not refused.accepted
    assert refused.refusals[0].startswith("wildcard scope: the policy's Resource")


def test_an_expired_url_says_when_it_expired() -> None:
    verdict = _judge(_canned(expires=NOW - 90))
    assert verdict.code == "AccessDenied"
    assert verdict.refusals == ("expired: DateLessThan 2025-12-29T09:18:30Z passed 90 s ago",)
    assert not _judge(_canned(), now=LATER).accepted  # DateLessThan itself is too late


def test_a_changed_url_is_a_bad_signature_with_the_likely_cause() -> None:
    tampered = _canned().replace("/42/", "/43/")
    (reason,) = _judge(tampered).refusals
    assert reason.startswith("bad signature:")
    assert "changed after signing" in reason


def test_an_unknown_key_id_is_named_and_the_real_signer_found() -> None:
    verdict = _judge(_canned(key_id="KUNKNOWN00001"))
    assert verdict.code == "AccessDenied"
    assert any(r.startswith("wrong key id: KUNKNOWN00001") for r in verdict.refusals)
    assert any(f"the signature is {KEY_ID}'s" in r for r in verdict.refusals)


def test_a_key_id_mix_up_during_rotation_is_named() -> None:
    # signed with the old key (seed 0 = KEY_ID's), labelled with the new key's ID
    (reason,) = _judge(_canned(key_id=OTHER_ID)).refusals
    assert reason == (
        f"bad signature: it is {KEY_ID}'s, but Key-Pair-Id names {OTHER_ID}: send "
        f"Key-Pair-Id={KEY_ID}"
    )


def test_a_resource_mismatch_without_wildcard() -> None:
    cookies = _cookie_header("https://cdn.example.com/albums/trip/1.jpg")
    (reason,) = _judge("https://cdn.example.com/albums/trip/2.jpg", cookies).refusals
    assert reason.startswith("resource mismatch: the policy's Resource")


def test_missing_key_pair_id_is_cloudfronts_missing_key() -> None:
    url = _canned().split("&Key-Pair-Id=")[0]
    verdict = _judge(url)
    assert verdict.code == "MissingKey"
    assert verdict.refusals == ("missing key: no Key-Pair-Id query parameter",)
    nothing = _judge(URL)
    assert nothing.code == "MissingKey"
    assert nothing.refusals[0].startswith("no signature")


def test_the_url_wins_over_cookies_as_at_the_edge() -> None:
    cookies = _cookie_header("https://cdn.example.com/*")
    assert _judge(URL, cookies).accepted
    assert not _judge(_canned(expires=NOW - 1), cookies).accepted


def test_conditions_not_yet_valid_and_source_address() -> None:
    cookies = _cookie_header("https://cdn.example.com/*", starts=NOW + 60, ip="192.0.2.0/24")
    verdict = _judge(URL, cookies, client_ip="198.51.100.7")
    assert [r.split(":")[0] for r in verdict.refusals] == [
        "not yet valid",
        "wrong client address",
    ]
    assert _judge(URL, cookies, now=NOW + 60, client_ip="192.0.2.9").accepted


def test_malformed_material_is_named() -> None:
    both = _canned() + "&Policy=e30_"
    assert any("both Expires" in r for r in _judge(both).refusals)
    garbage = "CloudFront-Policy=!!!; CloudFront-Signature=AAAA; CloudFront-Key-Pair-Id=" + KEY_ID
    assert any(r.startswith("malformed policy") for r in _judge(URL, garbage).refusals)
    no_expiry = _b64(b'{"Statement":[{"Resource":"*","Condition":{}}]}')
    header = (
        f"CloudFront-Policy={no_expiry}; CloudFront-Signature=AAAA; CloudFront-Key-Pair-Id={KEY_ID}"
    )
    assert any("DateLessThan" in r for r in _judge(URL, header).refusals)
    sha = _canned() + "&Hash-Algorithm=MD5"
    assert any(r.startswith("unknown hash algorithm") for r in _judge(sha).refusals)


def test_a_sha1_signature_sent_as_sha256_says_so() -> None:
    (reason,) = _judge(_canned() + "&Hash-Algorithm=SHA256").refusals
    assert reason == (
        "bad signature: it was hashed with SHA1, the request says SHA256; drop Hash-Algorithm"
    )


def test_cookies_of_two_scopes_sent_together_are_refused() -> None:
    one = _cookie_header("https://cdn.example.com/albums/a/*")
    two = _cookie_header("https://cdn.example.com/albums/b/*")
    verdict = _judge("https://cdn.example.com/albums/a/1.jpg", f"{one}; {two}")
    assert any("twice" in r for r in verdict.refusals)


@pytest.mark.parametrize("prefix", ["", "Cookie: "])
def test_a_cookie_header_is_read_with_or_without_its_name(prefix: str) -> None:
    cookies = prefix + _cookie_header("https://cdn.example.com/*")
    assert _judge(URL, cookies).accepted
