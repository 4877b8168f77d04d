"""The rediss:// topology for real: a TLS-only redis-server and a throwaway CA.

The module starts one `redis-server` that listens on a TLS port only (`--port 0`), with a
server certificate for 127.0.0.1 (SAN IP:127.0.0.1) signed by a CA made here with the
`openssl` CLI. The clients come from the service's own connect(), configured by
CALLAUTH_REDIS_URL alone: `rediss://host:port/db?ssl_ca_certs=<path>`. redis-py then
verifies the chain and the host name (ssl_cert_reqs defaults to "required",
ssl_check_hostname to true), so a client that does not trust the CA cannot connect, and the
app answers 503 store_unavailable for it, never a 500.

The process tooling (free ports, logs, SIGTERM on the death of pytest, terminate on exit) is
tests/topology.py's; the shared Redis on 6379 is never used.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis
import redis.exceptions
import topology
from conftest import IN_CI, RUN_ID, make_settings
from helpers import checked, problem, start, started, wrong
from redis.asyncio.connection import SSLConnection

from service.app import create_app
from service.store import connect

HOST = topology.HOST


# Certificates ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path


def _openssl(openssl: str, cwd: Path, *args: str) -> None:
    done = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stdout}{done.stderr}")


def make_pki(openssl: str, root: Path) -> Pki:
    """A CA valid for a day, and a server certificate for 127.0.0.1 that it signed."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        openssl, root,
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
        "-subj", "/CN=callauth test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    _openssl(
        openssl, root,
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={HOST}",
    )  # fmt: skip
    (root / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{HOST}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n",
        "utf-8",
    )
    _openssl(
        openssl, root,
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", f"0x{uuid.uuid4().hex}", "-days", "1", "-extfile", "server.ext",
        "-out", "server.crt",
    )  # fmt: skip
    return Pki(ca=root / "ca.crt", cert=root / "server.crt", key=root / "server.key")


# The server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsRedis:
    port: int
    pki: Pki

    def url(self, *, trusted: bool = True) -> str:
        """What an operator puts in CALLAUTH_REDIS_URL; untrusted: the system CAs only."""
        url = f"rediss://{HOST}:{self.port}/0"
        return f"{url}?ssl_ca_certs={quote(str(self.pki.ca))}" if trusted else url


def _tls_ping(port: int, ca: Path) -> bool:
    with redis.Redis(
        host=HOST,
        port=port,
        ssl=True,
        ssl_ca_certs=str(ca),
        socket_timeout=2,
        socket_connect_timeout=1,
    ) as client:
        return bool(client.ping())


@contextlib.contextmanager
def start_tls_redis(pki: Pki, *, attempts: int = 3) -> Iterator[TlsRedis]:
    """A redis-server on a free TLS port and no plain port; terminated on exit."""
    with topology._processes("tls") as procs:
        for attempt in range(attempts):
            (port,) = topology.free_ports(1)
            procs.spawn(
                f"tls-{port}",
                topology._server_args(
                    0,
                    "--tls-port", str(port),
                    "--tls-cert-file", str(pki.cert),
                    "--tls-key-file", str(pki.key),
                    "--tls-ca-cert-file", str(pki.ca),
                    "--tls-auth-clients", "no",
                ),
            )  # fmt: skip
            try:
                topology._wait("TLS redis-server", lambda p=port: _tls_ping(p, pki.ca), procs)
                break
            except topology.ServerExited:
                # Most likely the port was taken between choosing and binding it.
                procs.stop()
                if attempt == attempts - 1:
                    raise
        yield TlsRedis(port, pki)


def _missing_tools() -> str | None:
    missing = [name for name in ("redis-server", "openssl") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH: the rediss:// topology cannot start"
    return None


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    reason = _missing_tools()
    if reason is not None:
        if IN_CI:
            pytest.fail(reason + " (CI=true: missing tools fail the run)")
        pytest.skip(reason)
    pki = make_pki(str(shutil.which("openssl")), tmp_path_factory.mktemp("pki"))
    with start_tls_redis(pki) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"callauth-test:{RUN_ID}:tls:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
async def tls_client(tls_redis: TlsRedis, prefix: str) -> AsyncIterator[Any]:
    """The service's own client for the trusted rediss:// URL; this test's keys go after."""
    client = connect(make_settings(prefix, redis_url=tls_redis.url()))
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# Tests -------------------------------------------------------------------------------------


async def test_a_rediss_url_with_the_ca_gives_a_verified_tls_connection(
    tls_redis: TlsRedis, tls_client: Any
) -> None:
    assert isinstance(tls_client, aioredis.Redis)
    pool = tls_client.connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == str(tls_redis.pki.ca)
    assert await tls_client.ping() is True
    # The connection really is TLS, verified against the throwaway CA, host name included.
    conn = await pool.get_connection()
    try:
        assert conn.cert_reqs == ssl.CERT_REQUIRED
        assert conn.check_hostname is True
        ssl_object = conn._writer.get_extra_info("ssl_object")
        assert ssl_object is not None
        assert ssl_object.version() in ("TLSv1.2", "TLSv1.3")
        peer = ssl_object.getpeercert()
        assert ("IP Address", HOST) in peer["subjectAltName"]
    finally:
        await pool.release(conn)
    # And the server has no plain port to fall back to.
    plain = aioredis.from_url(
        f"redis://{HOST}:{tls_redis.port}/0", socket_timeout=2, socket_connect_timeout=2
    )
    with pytest.raises(redis.exceptions.ConnectionError):
        await plain.ping()
    await plain.aclose()


async def test_a_full_flow_runs_over_tls(aiohttp_client: Any, tls_client: Any, prefix: str) -> None:
    app = await aiohttp_client(create_app(make_settings(prefix), redis=tls_client))

    verification_id, code = await started(app)
    assert (await checked(app, verification_id, wrong(code)))["valid"] is False
    assert (await checked(app, verification_id, code))["valid"] is True

    # The state went to the TLS server, under this test's prefix.
    assert [k async for k in tls_client.scan_iter(match=prefix + "*")]


async def test_a_client_that_does_not_trust_the_ca_gets_503_not_500(
    aiohttp_client: Any, tls_redis: TlsRedis, prefix: str
) -> None:
    client = connect(make_settings(prefix, redis_url=tls_redis.url(trusted=False)))
    try:
        assert client.connection_pool.connection_class is SSLConnection
        # The reason is the certificate, not an unreachable server.
        with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
            await client.ping()

        app = await aiohttp_client(create_app(make_settings(prefix), redis=client))
        await problem(await start(app), 503, "store_unavailable")

        resp = await app.get("/readyz")
        assert resp.status == 503, await resp.text()
        assert (await resp.json())["checks"]["store"] == "unavailable"
    finally:
        await client.aclose()
