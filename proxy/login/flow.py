"""The sign-in endpoints (start, callback, logout) and the hook that sends a browser to them.

A navigation that needs a token goes to `login_path?next=<its path>`; that endpoint starts
the Authorization Code flow (PKCE S256, `state`, `nonce`) with the flow kept in a signed
cookie; the callback checks that cookie against `state`, trades the code, verifies the ID
token, sets the session cookie and sends the browser back to `next`. Nothing is kept in
memory between requests. Codes, states and tokens are never logged: the access log records
the path only, and refusals name the check that failed.

Sign-out is a POST from this proxy's own pages (navigation.py rule 3; a GET only shows the
button), and it ends the session everywhere, not only in this browser: the session's `jti`
is revoked through the state backend (every replica, within a second) until the session
would have expired, so a copy of the cookie taken earlier is refused from then on.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from aiohttp import web
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from ..auth import parse_cookie_header
from ..config import AuthSettings, LoginSettings
from ..errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    ProviderUnavailable,
    ProxyError,
    SignInRedirect,
)
from ..request import RequestContext
from ..state.revocations import Revocation
from .navigation import is_navigation, is_same_origin, safe_next, without_params
from .provider import Provider, ProviderHttp
from .session import (
    FLOW_COOKIE_PREFIX,
    MAX_SESSION_BYTES,
    STATE_PATTERN,
    Flow,
    Session,
    decode_flow,
    encode_flow,
    mint_session,
    read_session,
    session_claims,
)

_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# The sign-out page: one button, nothing from the request in it, and nothing it may load.
_PAGE_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"

Revoke = Callable[[Revocation], Awaitable[None]]


class SignIn:
    """Browser sign-in for one auth.login section."""

    def __init__(
        self,
        auth: AuthSettings,
        login: LoginSettings,
        http: ProviderHttp,
        clock: Callable[[], float],
        revoke: Revoke,
    ) -> None:
        """`revoke`: records a revocation through the state backend (State.revoke)."""
        self._login = login
        self._clock = clock
        self._revoke = revoke
        self._leeway = auth.leeway
        self._secret = login.session_secret.get_secret_value()
        self.provider = Provider(login, auth.jwks, auth.leeway, http, clock)
        # Query parameters that carry credentials: not taken along to `next`.
        self._credential_params = {s.query for s in auth.sources if s.query} | {auth.link_param}
        self._pages = {
            login.login_path: self._start,
            login.redirect_path: self._callback,
            login.logout_path: self._logout,
        }

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(self._pages)

    def redirect(self, request: web.BaseRequest, refused: ProxyError) -> SignInRedirect | None:
        """For a browser navigation: the redirect to sign in that replaces `refused` (a 401).
        For anything else (images, fetch(), API clients): None, and the 401 stands."""
        if not is_navigation(request.method, request.headers):
            return None
        target = without_params(request.raw_path, self._credential_params)
        if safe_next(target) is None:
            return None  # a path we would not send the browser back to: the 401 stands
        location = f"{self._login.login_path}?{urlencode({'next': target})}"
        return SignInRedirect(f"sign-in: {refused.reason}", location=location)

    async def answer(self, request: web.BaseRequest, context: RequestContext) -> web.StreamResponse:
        context.route = "sign-in"
        if context.path == self._login.logout_path:
            if request.method == "POST":
                return await self._logout(request, context)
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed("sign-out takes POST", allowed="GET, HEAD, POST")
            return self._logout_page()
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed("sign-in takes GET", allowed="GET, HEAD")
        return await self._pages[context.path](request, context)

    async def _start(self, request: web.BaseRequest, context: RequestContext) -> web.StreamResponse:
        target = safe_next(request.query.get("next", "/"))
        if target is None:
            raise BadRequest(
                "sign-in next is not a local path", detail="next must be a path on this proxy"
            )
        metadata = await self.provider.metadata()
        login = self._login
        flow = Flow(
            state=generate_token(43),
            nonce=generate_token(43),
            verifier=generate_token(64),
            next=target,
        )
        location = prepare_grant_uri(
            metadata.authorization_endpoint,
            login.client_id,
            "code",
            login.redirect_uri,
            login.scopes,
            flow.state,
            nonce=flow.nonce,
            code_challenge=create_s256_code_challenge(flow.verifier),  # type: ignore[no-untyped-call]
            code_challenge_method="S256",
        )
        response = web.Response(status=302, headers={"Location": location, **_NO_STORE})
        response.set_cookie(
            flow.cookie,
            encode_flow(flow, self._secret, self._clock(), login.flow_timeout),
            max_age=login.flow_timeout,
            path=login.redirect_path,
            secure=login.secure,
            httponly=True,
            samesite="Lax",
        )
        context.reason = "sign-in started"
        return response

    async def _callback(
        self, request: web.BaseRequest, context: RequestContext
    ) -> web.StreamResponse:
        login = self._login
        state = request.query.get("state", "")
        if not STATE_PATTERN.fullmatch(state):
            raise BadRequest(
                "sign-in callback without a valid state",
                detail="sign-in failed; open the link again",
            )
        cookie = parse_cookie_header(request.headers.get("Cookie")).get(FLOW_COOKIE_PREFIX + state)
        if not cookie:
            raise BadRequest(
                "sign-in callback without its cookie",
                detail="sign-in expired or was not started in this browser; open the link again",
            )
        flow = decode_flow(cookie, state, self._secret, self._clock())
        error = request.query.get("error")
        if error is not None:
            raise Forbidden(
                f"provider did not sign in ({error[:40]})", detail="sign-in was not completed"
            )
        code = request.query.get("code")
        if not code:
            raise BadRequest(
                "sign-in callback without a code", detail="sign-in failed; open the link again"
            )
        tokens = await self.provider.exchange(code, flow.verifier)
        claims = await self.provider.verify(tokens, flow.nonce)
        if login.userinfo:
            info = await self.provider.userinfo(tokens.access_token, claims["sub"])
            claims = {**info, **claims}  # the ID token's own claims win
        session = session_claims(login, claims, self._clock())
        token = mint_session(session, self._secret)
        if len(token) > MAX_SESSION_BYTES:
            raise ProviderUnavailable(
                f"session of {len(token)} bytes does not fit a cookie; map fewer claims "
                "(auth.login.claims)",
            )
        context.sub = str(session["sub"])[:256]
        context.iss = login.public_url  # the session's issuer, as routes' `issuers` name it
        context.audit(
            "signin",
            provider=login.issuer,
            expires=datetime.fromtimestamp(int(session["exp"]), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        response = web.Response(status=302, headers={"Location": flow.next, **_NO_STORE})
        response.set_cookie(
            login.cookie.name,
            token,
            max_age=max(0, int(session["exp"]) - int(self._clock())),
            path="/",
            secure=login.secure,
            httponly=True,
            samesite="Lax",
        )
        response.del_cookie(
            flow.cookie,
            path=login.redirect_path,
            secure=login.secure,
            httponly=True,
            samesite="Lax",
        )
        context.reason = "signed in"
        return response

    def _logout_page(self) -> web.Response:
        """What a GET of the sign-out path shows: a button that POSTs to it. A link or an
        image elsewhere that points here signs no one out."""
        action = html.escape(self._login.logout_path, quote=True)
        body = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            "<title>Sign out</title></head><body>"
            f'<form method="post" action="{action}">'
            '<button type="submit" name="sign-out">Sign out</button></form></body></html>'
        )
        return web.Response(
            text=body,
            content_type="text/html",
            headers={**_NO_STORE, "Content-Security-Policy": _PAGE_CSP},
        )

    async def _logout(
        self, request: web.BaseRequest, context: RequestContext
    ) -> web.StreamResponse:
        """End the session here and on every replica (its jti revoked), clear the cookie;
        then end the provider's session too where it says how."""
        login = self._login
        if not is_same_origin(request.headers, login.public_url):
            raise Forbidden(
                "sign-out from another site", detail="sign out from this site's own page"
            )
        cookie = parse_cookie_header(request.headers.get("Cookie")).get(login.cookie.name)
        session = read_session(cookie, self._secret, login) if cookie else None
        if session is not None:
            context.sub, context.iss = session.sub, session.iss
            await self._end_session(session)
        context.audit("signout", provider=login.issuer)
        location: str | None = login.logout_redirect
        try:
            end_session = (await self.provider.metadata()).end_session_endpoint
        except ProviderUnavailable:
            end_session = None  # signed out here all the same
        if end_session is not None:
            params = {"client_id": login.client_id}
            if login.logout_redirect is not None:
                params["post_logout_redirect_uri"] = login.public_url + login.logout_redirect
            separator = "&" if "?" in end_session else "?"
            location = end_session + separator + urlencode(params, quote_via=quote)
        response: web.Response
        if location is None:
            response = web.json_response({"signed_out": True}, headers=_NO_STORE)
        else:
            # 303: the browser follows a POST's answer with a GET.
            response = web.Response(status=303, headers={"Location": location, **_NO_STORE})
        response.del_cookie(
            login.cookie.name, path="/", secure=login.secure, httponly=True, samesite="Lax"
        )
        context.reason = "signed out"
        return response

    async def _end_session(self, session: Session) -> None:
        """Revoke the session, for as long as it could still be accepted. A backend that
        cannot record it is a 503 and the cookie stays: the user is not told they are signed
        out while a copy of the cookie would still work."""
        if session.jti is None or session.exp is None:
            return  # not one this proxy minted (they all carry both)
        now = self._clock()
        if session.exp + self._leeway <= now:
            return  # expired: refused anyway
        await self._revoke(Revocation("jti", session.jti, None, now, session.exp + self._leeway))
