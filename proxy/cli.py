"""Command line: argument parsing and process set-up only (serve / reload / check / token /
link / revoke / audit verify / cloudfront explain / demo / bench)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import RANDOM_KEY_COMMAND, Config, ConfigError, load_config
from .logs import configure_logging, write_diagnostic

DEFAULT_CONFIG = "config.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "bench":
        return _bench(args)
    if args.command == "audit":
        return _audit(args)
    # `serve` speaks JSON on stderr from its first line; the other commands speak to people.
    config = _load(args.config, as_json=args.command == "serve")
    if config is None:
        return 2
    command: int = args.run(args, config)
    return command


def _load(path: str, as_json: bool = False) -> Config | None:
    """The config, or None after saying what is wrong with it."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        if as_json:
            for problem in exc.problems:
                write_diagnostic("error", f"config error in {path}: {problem}", "proxy.config")
        else:
            print(f"config error in {path}:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
        return None
    for warning in config.warnings:
        if as_json:
            write_diagnostic("warning", f"config warning in {path}: {warning}", "proxy.config")
        else:
            print(f"config warning in {path}: {warning}", file=sys.stderr)
    return config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proxy",
        description="A gateway for private files in S3: stream or redirect, per route.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", help="override listen.host")
    serve.add_argument("--port", type=int, help="override listen.port")
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    serve.set_defaults(run=_serve)

    reload = commands.add_parser(
        "reload",
        help="validate the config, then make the running server reload it (SIGHUP to the pid "
        "in listen.pid_file)",
    )
    reload.set_defaults(run=_reload)

    check = commands.add_parser("check", help="validate the config and print its routes")
    check.set_defaults(run=_check)

    token = commands.add_parser("token", help="print a token signed with auth.secret")
    token.add_argument("--sub", required=True, help="the token's subject")
    _claim_argument(token)
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(run=_token)

    link = commands.add_parser(
        "link", help="print a share link: a proxy URL for one path, valid for --ttl seconds"
    )
    link.add_argument("path", help="the proxy path to share, e.g. /admin/exports/q4.pdf")
    link.add_argument("--ttl", type=int, default=600, help="lifetime in seconds (max 604800)")
    link.add_argument("--sub", help="subject recorded in the access log and usable in keys")
    link.add_argument(
        "--base-url", help="public URL of the proxy (default: http://listen.host:listen.port)"
    )
    link.set_defaults(run=_link)

    revoke = commands.add_parser(
        "revoke",
        help="refuse a subject's tokens, or one token or share link, from now on",
        description="--sub revokes every token of that subject issued until now (a fresh "
        "sign-in works); --jti one token or share link. With state.backend redis this writes "
        "Redis; with memory it asks the running server's admin endpoint (admin.access).",
    )
    what = revoke.add_mutually_exclusive_group(required=True)
    what.add_argument("--sub", help="the subject whose tokens to refuse")
    what.add_argument("--jti", help="the jti of one token or share link")
    what.add_argument("--list", action="store_true", help="print the revocations in force")
    revoke.add_argument(
        "--iss", help="with --sub: only this issuer's tokens (default: every issuer's)"
    )
    revoke.add_argument(
        "--ttl",
        type=int,
        help="forget it after this many seconds (default: once no token "
        "it covers can still be valid)",
    )
    revoke.add_argument("--undo", action="store_true", help="remove the revocation instead")
    revoke.add_argument("--url", help="memory backend: the admin endpoint's URL")
    revoke.add_argument(
        "--token", help="memory backend: a token admin.access lets in (or $PROXY_ADMIN_TOKEN)"
    )
    _claim_argument(revoke)
    revoke.set_defaults(run=_revoke)

    audit = commands.add_parser("audit", help="work with the audit trail (audit.path)")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser(
        "verify",
        help="check the hash chain of audit files; exit 0 if intact, 1 naming the first line "
        "that breaks it",
        description="Files may be given in any order; a file that continues another (after a "
        "rotation) is checked against it when both are given.",
    )
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument(
        "--mixed",
        action="store_true",
        help='skip lines that are not audit lines (audit.path "-" shares stdout with the '
        "access log)",
    )
    cloudfront = commands.add_parser(
        "cloudfront", help="CloudFront signed URLs and cookies: explain why one is refused"
    )
    cloudfront_commands = cloudfront.add_subparsers(dest="cloudfront_command", required=True)
    explain = cloudfront_commands.add_parser(
        "explain",
        help="decode a signed URL or cookie header and say why CloudFront would refuse it",
        description="Judges a signed URL, or a Cookie header with CloudFront-* cookies, against "
        "the keys of the config's cloudfront section, as CloudFront does: key ID, signature "
        "(with the public key), expiry, Resource and its wildcards. Exits 0 when CloudFront "
        "would serve it, 1 when it would refuse it.",
    )
    explain.add_argument("signed", help="a signed URL, or a Cookie header (quote it)")
    explain.add_argument("--url", help="with cookies: the URL the browser requested with them")
    explain.add_argument("--client-ip", help="the viewer's address, for a policy's IpAddress")
    explain.add_argument(
        "--at", type=float, help="judge at this time (seconds since 1970) instead of now"
    )
    explain.set_defaults(run=_explain)

    demo = commands.add_parser(
        "demo", help="run the proxy against an in-process S3 with demo data and a demo page"
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    demo.add_argument(
        "--sign-in",
        action="store_true",
        help="browser sign-in through an embedded OpenID Connect provider (loopback only)",
    )

    bench = commands.add_parser(
        "bench",
        help="compare stream, redirect and cloudfront on the same objects, with numbers",
        description="Without --config: against the demo's S3 (and its loopback stand-in for "
        "a CloudFront edge) with objects of several sizes. With --config: the routes of that "
        "config, on the objects named by --path, each fetched through a stream copy and a "
        "redirect copy of its route, and a cloudfront copy when the config has a cloudfront "
        "section.",
    )
    bench.add_argument("--out", default="bench-report", help="folder for report.md and the chart")
    bench.add_argument("--rounds", type=int, default=3, help="first views to take the median of")
    bench.add_argument("--config", help="bench the routes of this config instead of the demo's")
    bench.add_argument(
        "--engine",
        choices=["both", "builtin", "aiobotocore"],
        default="both",
        help="the s3.engine to bench; both (the default) runs each and compares them",
    )
    bench.add_argument(
        "--path",
        action="append",
        default=[],
        dest="paths",
        metavar="PATH",
        help="with --config: a proxy path to fetch, e.g. /files/a.jpg (repeat for several)",
    )
    bench.add_argument(
        "--token", help="with --config: the token to send (default: one minted with auth.secret)"
    )
    bench.add_argument(
        "--sub", default="bench", help="subject of the minted token (default: bench)"
    )
    _claim_argument(bench)

    for sub in (serve, reload, check, token, link, revoke, explain):
        sub.add_argument("--config", default=DEFAULT_CONFIG, help="path to config.yaml")
    return parser


def _claim_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help='extra claim; VALUE is parsed as JSON when it can be (e.g. roles=\'["a","b"]\')',
    )


def _claims(sub: str, items: Sequence[str]) -> dict[str, Any] | None:
    """`sub` plus the --claim items, or None after saying which item is malformed."""
    claims: dict[str, Any] = {"sub": sub}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            print(f"--claim {item!r}: expected NAME=VALUE", file=sys.stderr)
            return None
        try:
            claims[name] = json.loads(raw)
        except json.JSONDecodeError:
            claims[name] = raw
    return claims


def _serve(args: argparse.Namespace, config: Config) -> int:
    from pathlib import Path

    from .audit import AuditUnavailable
    from .reload import PidFileError
    from .server import run

    configure_logging(args.log_level)
    listen = config.settings.listen
    host = args.host or listen.host
    port = args.port if args.port is not None else listen.port

    def ready(bound: int) -> None:
        url = f"http://{host}:{bound}"
        # Always written (whatever --log-level): scripts wait for it, and take `url` from it.
        message = f"proxy: {len(config.routes)} routes, listening on {url}"
        write_diagnostic("info", message, url=url)

    try:
        run(config, host, port, ready, config_path=Path(args.config))
    except (PidFileError, AuditUnavailable) as exc:
        write_diagnostic("error", str(exc))
        return 2
    except OSError as exc:
        write_diagnostic("error", f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return 2
    return 0


def _reload(args: argparse.Namespace, config: Config) -> int:
    """The config was validated on the way here (with this shell's environment); the server
    validates it again with its own, and logs the outcome."""
    from .reload import PidFileError, signal_reload

    pid_file = config.settings.listen.pid_file
    if pid_file is None:
        print(
            "listen.pid_file is not set, so there is no server to find: set it (e.g. "
            "/tmp/s3-proxy.pid) and restart the server, or send SIGHUP to it yourself",
            file=sys.stderr,
        )
        return 2
    try:
        pid = signal_reload(pid_file)
    except PidFileError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"{args.config}: OK; asked the proxy (pid {pid}) to reload it; its log says the outcome")
    return 0


def _demo(args: argparse.Namespace) -> int:
    try:
        from .demo import run_demo

        if args.sign_in:
            from .demo.provider import EmbeddedProvider  # noqa: F401 - only: is it installed?
    except ImportError as exc:  # moto (and oidc-provider-mock) are the demo's extra
        print(
            f"the demo needs its extra: pip install -e '.[demo]' ({exc.name} is missing)",
            file=sys.stderr,
        )
        return 2
    return run_demo(args.host, args.port, sign_in=args.sign_in)


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .bench import ENGINES, run_bench, run_config_bench
    from .benchplan import BenchError

    out, rounds = Path(args.out), max(1, args.rounds)
    engines = list(ENGINES) if args.engine == "both" else [args.engine]
    if args.config is None:
        given = [name for name, value in _CONFIG_ONLY if getattr(args, value)]
        if given:
            print(f"bench: {given[0]} goes with --config", file=sys.stderr)
            return 2
    claims = _claims(args.sub, args.claim)
    if claims is None:
        return 2
    try:
        if args.config is None:
            return run_bench(out, rounds, engines=engines)
        config = _load(args.config)
        if config is None:
            return 2
        return run_config_bench(
            Path(args.config), config, args.paths, out, rounds, args.token, claims, engines
        )
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2


def _audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .audit import ChainBroken, verify_files

    try:
        report = verify_files([Path(name) for name in args.files], args.mixed)
    except ChainBroken as exc:
        print(f"audit chain broken at {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    for line in report:
        print(line)
    return 0


_CONFIG_ONLY = (("--path", "paths"), ("--token", "token"), ("--claim", "claim"))


def _check(args: argparse.Namespace, config: Config) -> int:
    from .cloudfront import describe

    print(f"{args.config}: OK, {len(config.routes)} routes")
    for route in config.routes:
        s = route.settings
        how = f"{s.delivery}, cookies for {s.cookie_scope}" if s.cookie_scope else s.delivery
        print(f"  {s.name}: {s.match} -> s3://{s.bucket}/{s.key} [{how}]")
    signer = config.cloudfront
    if signer is not None:  # what the key is, never what it holds
        active = signer.active
        print(
            f"  cloudfront: {signer.origin}, signs with key {active.key_id} "
            f"({describe(active.private)}, {signer.hash_name})"
        )
        for listed in signer.listed:
            print(f"    also trusted: key {listed.key_id} ({describe(listed.public)}), not signing")
    return 0


def _explain(args: argparse.Namespace, config: Config) -> int:
    import time

    from .cloudfront.explain import explain

    if config.cloudfront is None:
        print(
            f"{args.config} has no cloudfront section, so there are no keys to check against; "
            "add one (see docs/configuration.md#cloudfront)",
            file=sys.stderr,
        )
        return 2
    now = time.time() if args.at is None else args.at
    found = explain(args.signed, config.cloudfront, now, args.url, args.client_ip)
    print(found.text)
    return 0 if found.accepted else 1


def _token(args: argparse.Namespace, config: Config) -> int:
    from .auth import issue_token

    claims = _claims(args.sub, args.claim)
    if claims is None:
        return 2
    longest = config.settings.revocation.max_token_lifetime
    if not 1 <= args.ttl <= longest:
        # The proxy refuses a token that lives longer (so revocations can expire): printing
        # one would hand the user a token that never works.
        print(
            f"--ttl must be between 1 and {longest} seconds (revocation.max_token_lifetime in "
            f"{args.config}); the proxy refuses longer-lived tokens. Raise that setting if "
            "tokens must live longer",
            file=sys.stderr,
        )
        return 2
    try:
        print(issue_token(config.settings.auth, claims, args.ttl))
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return 0


def _link(args: argparse.Namespace, config: Config) -> int:
    from urllib.parse import quote, unquote

    import jwt

    from .links import LinkError, link_target, mint_link_token

    auth = config.settings.auth
    if auth.link_secret is None:
        print(
            f"auth.link_secret is not set (or empty) in {args.config}; share links need their "
            f"own secret: export LINK_SECRET=$({RANDOM_KEY_COMMAND}) (the shipped config.yaml "
            "reads it; another config needs `link_secret: ${LINK_SECRET:-}` under auth), and "
            "give the proxy the same value",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.ttl <= 604800:
        print("--ttl must be between 1 and 604800 seconds", file=sys.stderr)
        return 2
    path = unquote(args.path) if "%" in args.path else args.path
    try:
        target = link_target(config, path, args.sub)
    except LinkError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    token = mint_link_token(auth.link_secret.get_secret_value(), target, args.ttl, args.sub)
    listen = config.settings.listen
    base = (args.base_url or f"http://{listen.host}:{listen.port}").rstrip("/")
    print(f"{base}{quote(path, safe='/')}?{quote(auth.link_param)}={token}")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    print(f"to revoke this link: {_revoke_command(args.config, config, jti)}", file=sys.stderr)
    return 0


def _revoke_command(path: str, config: Config, jti: str) -> str:
    """The revoke command for one jti, to be run as printed from anywhere: with this config
    (its state backend or admin endpoint is where the revocation must go), and with the
    claims admin.access wants when the command must go through that endpoint."""
    from pathlib import Path

    from .policy import claims_that_pass
    from .state.command import claim_arguments

    command = f"python -m proxy revoke --config {shlex.quote(str(Path(path).absolute()))}"
    rule = config.admin_access
    if config.settings.state.backend == "memory" and rule is not None and rule.needs_token:
        wanted = claims_that_pass(rule)
        if wanted:
            command += " " + claim_arguments(wanted)
    return f"{command} --jti {jti}"


def _revoke(args: argparse.Namespace, config: Config) -> int:
    from .state.command import Order, run_order

    if args.iss is not None and args.sub is None:
        print("--iss goes with --sub", file=sys.stderr)
        return 2
    if args.ttl is not None and not 1 <= args.ttl <= 31_536_000:
        print("--ttl must be between 1 and 31536000 seconds", file=sys.stderr)
        return 2
    claims = _claims("proxy-revoke", args.claim)
    if claims is None:
        return 2
    if args.list:
        if args.undo or args.ttl is not None:
            print("--list takes no --undo or --ttl", file=sys.stderr)
            return 2
        order = Order("list")
    else:
        order = Order(
            "undo" if args.undo else "revoke",
            "sub" if args.sub is not None else "jti",
            args.sub or args.jti,
            args.iss,
            args.ttl,
        )
    return run_order(config, order, args.url, args.token, claims)
