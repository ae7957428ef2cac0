"""Who is asking, and may they: share links and tokens checked, the route's rule applied, the
object named, rate limits spent. Shared by every surface; answers no request itself.

Rules:
1. S3 is not touched before a request is authorized: `authorize` renders the key only after
   the rule passed, and nothing here calls storage.
2. A credential's facts go on the RequestContext as soon as it is verified (sub, iss, the
   subject limits count, its expiry), so a later refusal is still logged with who was refused.
3. A refused request spends its client's rate-limit tokens too: a flood of bad tokens is
   limited like any other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..auth import Clock, TokenVerifier, find_token, token_sources
from ..config import Config, CorsSettings, LimitsSettings, RateLimitSettings, Route
from ..cors import preflight_headers, response_headers
from ..errors import Forbidden, ProxyError, Unauthenticated
from ..jwks import HttpJson
from ..links import LINK_AUDIENCE, LinkTarget, LinkVerifier
from ..login import SignIn
from ..ops import Telemetry
from ..policy import Rule
from ..request import ObjectRef, RequestContext
from ..ssec import CustomerKey
from ..state import Bucket, State

Claims = dict[str, Any]

_NO_QUERY: dict[str, str] = {}


class Access:
    """One config's credentials and rules. `previous`: the Access this one replaces on a
    reload; its verifier (with the JWKS keys it fetched) and sign-in are kept when the auth
    settings did not change."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        fetch_json: HttpJson,
        telemetry: Telemetry,
        state: State,
        previous: Access | None = None,
    ) -> None:
        settings = config.settings
        auth = self._auth = settings.auth
        self._sources = token_sources(auth)  # this config's, for every request
        self._telemetry = telemetry
        self._state = state
        self.limits: LimitsSettings = settings.limits
        same = previous if previous is not None and previous._auth == auth else None
        self.verifier: TokenVerifier = (
            same.verifier if same else TokenVerifier(auth, clock, fetch_json)
        )
        login = auth.login
        self.sign_in: SignIn | None = (
            None
            if login is None
            else same.sign_in
            if same and same.sign_in
            else SignIn(auth, login, fetch_json, clock, state.revoke)
        )
        # token -> its caller's facts (optional_claims); a token's claims never change.
        self._callers: dict[str, _Facts] = {}
        link_secret = auth.link_secret
        self._links = (
            LinkVerifier(link_secret.get_secret_value(), auth.leeway, clock)
            if link_secret is not None
            else None
        )

    async def admit(
        self,
        request: web.BaseRequest,
        context: RequestContext,
        route: Route,
        params: dict[str, str],
    ) -> ObjectRef:
        """Authenticate, authorize and spend the route's rate limits: the object (also set as
        `context.object`), or the refusal."""
        rates = route.settings.rate_limit or self.limits.rate_limit
        # (No limit configured: no bucket to spend, and no call to make for none.)
        limited = rates.per_client is not None or rates.per_subject is not None
        try:
            ref = await self._admit(request, context, route, params)
        except ProxyError:
            # Rule 3; over the limit, the refusal is a 429.
            if limited:
                await self.limit(context, route.name, rates, None)
            raise
        if limited:
            # Both buckets in one call: with Redis, one round trip per request.
            await self.limit(context, route.name, rates, context.subject_key)
        context.object = ref
        return ref

    async def _admit(
        self,
        request: web.BaseRequest,
        context: RequestContext,
        route: Route,
        params: dict[str, str],
    ) -> ObjectRef:
        link = request.query.get(self._auth.link_param) if self._links else None
        if link and self._links is not None and route.rule.needs_token:
            # A share link is itself the authorization for exactly one object: checked after
            # routing, against the route that matched and the key it rendered.
            try:
                claims = self._links.verify(link, request.method)
            except Unauthenticated as exc:
                self._telemetry.token_checked("link", _rejected(exc))
                raise
            self._telemetry.token_checked("link", "valid")
            context.token_source = "share link"  # noqa: S105 - a label, not a secret
            context.via_link = True
            _note_caller(context, claims)
            self._state.check_token(claims, link=True)
            key = route.key.render(params, claims)
            self._links.check_target(claims, LinkTarget(route.name, route.settings.bucket, key))
            return object_of(route, key)
        if not route.rule.needs_token:
            return authorize(route, params, None)
        claims = await self.authenticate(request, context, route.sign_in)
        return authorize(route, params, claims)

    async def check_access(
        self, rule: Rule | None, what: str, request: web.BaseRequest, context: RequestContext
    ) -> None:
        """The access rule of an endpoint that names no object (metrics, admin)."""
        if rule is None:  # config refuses metrics or admin without their access rule
            raise Forbidden(f"{what}.access not configured")
        if not rule.needs_token:
            return
        claims = await self.authenticate(request, context)
        denial = rule.denial(claims, {})
        if denial is not None:
            # Operators' endpoints say which claim the rule found missing or unmatched (its
            # name only, never the value it wants), so a refused operator can mint the
            # right token.
            raise Forbidden(denial, detail=f"{what}.access: {denial}")

    async def passes(self, rule: Rule | None, request: web.BaseRequest) -> bool:
        """Whether the request carries a token that `rule` lets in: for answers that say
        more to an operator (the readiness probe's problems) and must never refuse anyone.
        No token (an orchestrator's probe) costs nothing; a bad one is no error. A rule
        that needs no token (an endpoint open to all) is no reason to say more."""
        if rule is None or not rule.needs_token:
            return False
        query = request.query if request.rel_url.raw_query_string else _NO_QUERY
        found = find_token(self._sources, request.headers, None, query)
        if found is None:
            return False
        try:
            claims = await self.verifier.verify(found[1])
            self._state.check_token(claims)
        except ProxyError:
            return False
        return rule.denial(claims, {}) is None

    async def limit(
        self,
        context: RequestContext,
        scope: str,
        rates: RateLimitSettings,
        subject: str | None,
    ) -> None:
        """Spend one request's rate-limit tokens in `scope`, or raise the 429."""
        group = buckets(context, scope, rates, subject)
        if group:
            refusal = (await self._state.take([group]))[0]
            if refusal is not None:
                raise refusal

    async def authenticate(
        self, request: web.BaseRequest, context: RequestContext, sign_in: bool = False
    ) -> Claims:
        """The token's claims, or 401; with `sign_in` (the route accepts sign-in sessions), a
        browser navigation is sent to sign in instead."""
        try:
            claims = await self.optional_claims(request, context)
            if claims is None:
                raise Unauthenticated("no token")
        except Unauthenticated as exc:
            redirect = self.sign_in.redirect(request, exc) if sign_in and self.sign_in else None
            if redirect is not None:
                raise redirect from None
            raise
        return claims

    async def optional_claims(
        self, request: web.BaseRequest, context: RequestContext
    ) -> Claims | None:
        """The verified token's claims, None without a token, or 401 for a bad one."""
        query = request.query if request.rel_url.raw_query_string else _NO_QUERY
        found = find_token(self._sources, request.headers, None, query)
        if found is None:
            return None
        context.token_source, token = found
        try:
            claims = await self.verifier.verify(token)
        except Unauthenticated as exc:
            self._telemetry.token_checked("jwt", _rejected(exc))
            raise
        self._telemetry.token_checked("jwt", "valid")
        # The caller's facts, computed once per verified token: the verifier hands out the
        # same claims object for as long as it remembers the token, and a remembered facts
        # entry holds (so pins) the claims it was made from.
        facts = self._callers.get(token)
        if facts is None or facts[0] is not claims:
            facts = _caller_facts(claims)
            if len(token) <= _CALLER_TOKEN_LENGTH:  # (keys stay small, as the verifier's)
                if len(self._callers) >= _CALLERS_KEPT:
                    self._callers.clear()  # bounded: many tokens only cost recomputing
                self._callers[token] = facts
        (
            context.claims,
            context.sub,
            context.iss,
            context.subject_key,
            context.expires_at,
        ) = facts
        # After the verified-token cache, on every request: a cached token is still refused
        # once revoked.
        self._state.check_token(claims)
        return claims


def authorize(route: Route, params: dict[str, str], claims: Claims | None) -> ObjectRef:
    """Check the rule, then render the key (rule 1): the object, or the refusal."""
    if route.rule.needs_token:
        if claims is None:
            raise Unauthenticated("no token")
        if route.issuers is not None and claims.get("iss") not in route.issuers:
            # Another configured issuer's `sub: alice` is not this route's alice.
            raise Forbidden("token issuer not trusted by this route")
        denial = route.rule.denial(claims, params)
        if denial is not None:
            raise Forbidden(denial)
    return object_of(route, route.key.render(params, claims))


def object_of(route: Route, key: str) -> ObjectRef:
    """The object a route names with `key`, as S3 sees it: with the route's customer key.
    A hot object's ref is the same value each time: building one costs more than looking it
    up, and the caches downstream then find it by identity before equality."""
    bucket, sse = route.settings.bucket, route.sse
    name = (bucket, key, sse)
    ref = _refs.get(name)
    if ref is None:
        if len(_refs) >= _REFS_KEPT:
            _refs.clear()  # bounded: many distinct keys only cost building refs again
        ref = _refs[name] = ObjectRef(bucket, key, sse)
    return ref


# (bucket, key, customer key) -> its ObjectRef: a pure function of the three, so shared by
# every config (a reload changes nothing it holds).
_refs: dict[tuple[str, str, CustomerKey | None], ObjectRef] = {}
_REFS_KEPT = 4096


def answer_cors(
    request: web.BaseRequest,
    context: RequestContext,
    settings: CorsSettings | None,
    methods: list[str],
) -> web.Response | None:
    """Answer a CORS preflight, or note the CORS headers every later response must carry."""
    if settings is None:
        return None
    origin = request.headers.get("Origin")
    requested = request.headers.get("Access-Control-Request-Method")
    if request.method == "OPTIONS" and requested is not None:
        headers = preflight_headers(settings, origin, methods, requested)
        if headers is None:
            raise Forbidden("CORS preflight refused", detail="origin or method not allowed")
        return web.Response(status=204, headers=headers)
    context.cors = response_headers(settings, origin)
    return None


def buckets(
    context: RequestContext, scope: str, rates: RateLimitSettings, subject: str | None
) -> list[Bucket]:
    """The rate-limit buckets one request spends, client first."""
    group = []
    if rates.per_client is not None:
        group.append(
            Bucket((scope, "client", context.client or "unknown"), rates.per_client, "client")
        )
    if rates.per_subject is not None and subject is not None:
        group.append(Bucket((scope, "sub", subject), rates.per_subject, "subject"))
    return group


def subject_key(claims: Mapping[str, Any] | None) -> str | None:
    """Whom per-subject limits count: the whole `sub`, of one issuer. Another issuer's
    alice, a share link's subject, or a `sub` sharing the log's first 256 characters is
    someone else, and cannot spend this one's rate or streams."""
    if claims is None or claims.get("sub") is None:
        return None
    kind = "link" if claims.get("aud") == LINK_AUDIENCE else "token"
    return f"{kind}\n{claims.get('iss', '')}\n{claims['sub']}"


def _note_caller(context: RequestContext, claims: Claims) -> None:
    """Rule 2: the verified credential's facts, on the context."""
    (
        context.claims,
        context.sub,
        context.iss,
        context.subject_key,
        context.expires_at,
    ) = _caller_facts(claims)


_Facts = tuple[Claims, str | None, str | None, str | None, float | None]
_CALLERS_KEPT = 4096
_CALLER_TOKEN_LENGTH = 1024


def _caller_facts(claims: Claims) -> _Facts:
    """(claims, sub and iss as the access log records them, subject_key, expiry)."""
    sub = claims.get("sub")
    iss = claims.get("iss")
    return (
        claims,
        str(sub)[:256] if sub is not None else None,
        str(iss)[:256] if iss is not None else None,
        subject_key(claims),
        _expiry(claims),
    )


def _expiry(claims: Mapping[str, Any]) -> float | None:
    """The token's `exp`, if it has a numeric one: nothing signed may outlive it."""
    exp = claims.get("exp")
    return exp if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def _rejected(exc: Unauthenticated) -> str:
    """The outcome label of a refused credential: a fixed value, never the reason's text."""
    return "expired" if exc.reason == "token expired" else "invalid"
