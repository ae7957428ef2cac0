"""`rediss://` against a real redis-server on its TLS port, with a throwaway CA and
certificates made here (cryptography): the server is verified against `state.tls.ca_file`
(and refused without it), and a client certificate is shown to a Redis that asks for one."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.cli import main
from proxy.errors import StateUnavailable
from proxy.state import new_revocation
from proxy.state.redisstate import RedisState

from .conftest import build_config, config_dict
from .redisd import REDIS_SERVER, RedisServer, free_port


def _tls_built_in() -> bool:
    """Debian's redis-server is built with TLS; a build without it does not know the
    directive (and one with it complains of the missing certificate instead)."""
    answer = subprocess.run(
        [REDIS_SERVER, "--port", "0", "--tls-port", "1"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "Bad directive" not in answer.stdout + answer.stderr


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, as PEM files."""
    where = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)

    def key(name: str) -> ec.EllipticCurvePrivateKey:
        made = ec.generate_private_key(ec.SECP256R1())
        (where / f"{name}.key").write_bytes(
            made.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return made

    def certificate(
        name: str,
        subject_key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None,
        issuer_key: ec.EllipticCurvePrivateKey,
        extensions: list[tuple[x509.ExtensionType, bool]],
    ) -> None:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(subject_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical)
        signed = builder.sign(issuer_key, hashes.SHA256())
        (where / f"{name}.pem").write_bytes(signed.public_bytes(serialization.Encoding.PEM))

    ca_key = key("ca")
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")])
    certificate("ca", ca_key, None, ca_key, [(x509.BasicConstraints(ca=True, path_length=0), True)])
    leaf = [(x509.BasicConstraints(ca=False, path_length=None), True)]
    certificate(
        "server",
        key("server"),
        ca_name,
        ca_key,
        [
            *leaf,
            (
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                False,
            ),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    certificate(
        "client",
        key("client"),
        ca_name,
        ca_key,
        [*leaf, (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)],
    )
    return where


class TlsRedisServer(RedisServer):
    """Only a TLS port; `clients`: whether it asks clients for a certificate."""

    def __init__(self, workdir: Path, pki: Path, clients: bool) -> None:
        self.tls_port = free_port()
        super().__init__(
            workdir,
            [
                "--tls-port",
                str(self.tls_port),
                "--tls-cert-file",
                str(pki / "server.pem"),
                "--tls-key-file",
                str(pki / "server.key"),
                "--tls-ca-cert-file",
                str(pki / "ca.pem"),
                "--tls-auth-clients",
                "yes" if clients else "no",
            ],
        )
        self.port = 0  # no plain port at all
        self.url = f"rediss://127.0.0.1:{self.tls_port}/0"
        self._pki = pki

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--port") + 1] = "0"
        return command

    def answers(self) -> bool:
        context = ssl.create_default_context(cafile=self._pki / "ca.pem")
        context.load_cert_chain(self._pki / "client.pem", self._pki / "client.key")
        try:
            raw = socket.create_connection(("127.0.0.1", self.tls_port), timeout=1)
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def tls_redis(
    tmp_path: Path, pki: Path, request: pytest.FixtureRequest
) -> Iterator[TlsRedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (scripts/test.sh installs it when root)")
    if not _tls_built_in():
        pytest.skip("this redis-server is built without TLS (Debian's has it)")
    server = TlsRedisServer(tmp_path / "redis", pki, clients=getattr(request, "param", False))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _settings(url: str, **tls: object) -> object:
    data = config_dict(None, state={"backend": "redis", "url": url, "tls": tls})
    return build_config(data).settings


async def test_the_server_is_verified_against_the_configured_ca(
    tls_redis: TlsRedisServer, pki: Path
) -> None:
    trusted = RedisState(_settings(tls_redis.url, ca_file=str(pki / "ca.pem")), time.time)
    await trusted.open()
    try:
        assert await trusted.check() is None
        await trusted.revoke(new_revocation("jti", "j1", None, time.time(), 3600, 30))
        assert [entry.value for entry in await trusted.revocations()] == ["j1"]
    finally:
        await trusted.close()
    # The system's store does not know this CA: nothing is sent to an unverified server.
    untrusting = RedisState(_settings(tls_redis.url), time.time)
    await untrusting.open()
    try:
        assert await untrusting.check() is not None
        with pytest.raises(StateUnavailable):
            await untrusting.revocations()
    finally:
        await untrusting.close()


@pytest.mark.parametrize("tls_redis", [True], indirect=True)
async def test_a_client_certificate_is_shown_when_configured(
    tls_redis: TlsRedisServer, pki: Path
) -> None:
    files = {"ca_file": str(pki / "ca.pem")}
    without = RedisState(_settings(tls_redis.url, **files), time.time)
    await without.open()
    try:
        assert await without.check() is not None
    finally:
        await without.close()
    files |= {"cert_file": str(pki / "client.pem"), "key_file": str(pki / "client.key")}
    shown = RedisState(_settings(tls_redis.url, **files), time.time)
    await shown.open()
    try:
        assert await shown.check() is None
    finally:
        await shown.close()


def test_the_revoke_command_speaks_tls_with_files_relative_to_its_config(
    tls_redis: TlsRedisServer, pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ca.pem").write_bytes((pki / "ca.pem").read_bytes())
    data = config_dict(
        None, state={"backend": "redis", "url": tls_redis.url, "tls": {"ca_file": "ca.pem"}}
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    assert main(["revoke", "--config", str(config), "--jti", "lost-laptop"]) == 0
    capsys.readouterr()
    assert main(["revoke", "--config", str(config), "--list"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["jti"] == "lost-laptop"
