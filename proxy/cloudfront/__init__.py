"""CloudFront signed URLs and signed cookies, one face: the signing core behind
`delivery: cloudfront`, `python -m proxy cloudfront explain` and the demo's stand-in edge.

policy.py (policy JSON, wildcards, CloudFront's base64), keys.py (RSA 2048 / ECDSA P-256 keys,
sign and verify), signer.py (canned URLs, custom-policy cookies), scope.py (a route's
cookie_scope for one request), verify.py (judge a URL or cookies as CloudFront would),
explain.py (say it in words), settings.py (the `cloudfront:` config section). Nothing here does
network I/O; settings.py alone reads files (the key files, at config load).
"""

from .keys import KeyProblem, SigningKey, VerifyingKey, describe
from .policy import Policy, custom_policy, parse_policy, resource_matches
from .scope import CookieScope, compile_scope, scope_path
from .signer import SignedCookies, Signer, object_path
from .verify import Presented, Verdict, from_request, verify

__all__ = [
    "CookieScope",
    "KeyProblem",
    "Policy",
    "Presented",
    "SignedCookies",
    "Signer",
    "SigningKey",
    "Verdict",
    "VerifyingKey",
    "compile_scope",
    "custom_policy",
    "describe",
    "from_request",
    "object_path",
    "parse_policy",
    "resource_matches",
    "scope_path",
    "verify",
]
