"""`python -m proxy cloudfront explain`: decode a signed URL or a cookie header, judge it
against the configured key group as CloudFront would, and say why in words, the diagnosis a
bare `AccessDenied` never gives. No I/O: the command line prints what this returns.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from .policy import decode, parse_policy
from .signer import Signer
from .verify import Presented, Verdict, from_request, verify


@dataclass(frozen=True)
class Explanation:
    accepted: bool
    text: str


def explain(
    signed: str,
    signer: Signer,
    now: float,
    url: str | None = None,
    client_ip: str | None = None,
) -> Explanation:
    """`signed` is a signed URL or a Cookie header (then `url` is the URL requested with it)."""
    notes: list[str] = []
    text = signed.strip()
    if text.startswith(("http://", "https://")):
        presented = from_request(text, None)
        what = "signed URL"
    else:
        presented = from_request(url or "", text)
        what = "signed cookies"
        if presented.via == "cookies" and url is None:
            presented, note = _without_url(presented)
            notes.append(note)
    verdict = verify(presented, signer.trusted, now, client_ip)
    notes += _notes(presented, verdict, signer)
    lines = [
        f"CloudFront would serve this request ({what})."
        if verdict.accepted
        else f"CloudFront would refuse this request ({what}) with {verdict.code}, because:"
    ]
    lines += [f"  - {reason}" for reason in verdict.refusals]
    if verdict.facts:
        lines.append("What it carries:")
        lines += [f"  - {fact}" for fact in verdict.facts]
    if notes:
        lines.append("Notes:")
        lines += [f"  - {note}" for note in notes]
    return Explanation(verdict.accepted, "\n".join(lines))


def _without_url(presented: Presented) -> tuple[Presented, str]:
    """Cookies judged with no request URL: their own Resource stands in for one."""
    resource = None
    with contextlib.suppress(ValueError):  # a malformed policy is the verdict's to name
        resource = parse_policy(decode(presented.fields.get("Policy", ""))).resource
    stand_in = resource or "https://unknown/"
    note = (
        "no --url given: the policy's Resource was not checked against a request; add "
        "--url https://DOMAIN/PATH for the object the browser asked for"
    )
    if "Expires" in presented.fields:
        note = "a canned-policy cookie is signed over the URL itself: add --url to check it"
    return Presented(presented.via, stand_in, presented.fields, presented.duplicates), note


def _notes(presented: Presented, verdict: Verdict, signer: Signer) -> list[str]:
    notes = []
    host = urlsplit(presented.url).netloc
    ours = urlsplit(signer.origin).netloc
    if presented.url.startswith(("http://", "https://")) and host and host != ours:
        notes.append(f"the URL is for {host}; the configured distribution is {ours}")
    policy = verdict.policy
    if policy is not None and "Policy" in presented.fields:
        resource = policy.resource
        if resource is None or resource.split("://", 1)[-1].split("/", 1)[-1] in ("*", ""):
            notes.append(
                "the policy covers every object of the distribution: anyone holding these "
                "cookies can fetch them all until they expire"
            )
    return notes
