"""Interoperability with OpenSSL's own DTLS peers: ``openssl s_client`` and ``s_server``.

Both directions of data, and mutual authentication both ways; certificates made at test time.
.ci/run installs Debian's ``openssl`` where it is missing; without it these tests skip.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

import anyio
import pytest
from anyio.abc import Process

from anydgram.dtls import DTLSError, DTLSServerConfig, client_context, connect_dtls, server_context
from dtls_harness import PKI, echo_server, make_pki

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Output:
    """What an openssl process printed so far (stdout and stderr together)."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self.text = b""

    async def wait_for(self, needle: bytes, timeout: float = 10.0) -> None:
        with anyio.fail_after(timeout):
            while needle not in self.text:
                chunk = await self._stream.receive()
                self.text += chunk


@asynccontextmanager
async def openssl(*args: str) -> AsyncGenerator[tuple[Process, Output]]:
    assert OPENSSL is not None
    process = await anyio.open_process(
        [OPENSSL, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process, Output(process)
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()  # our own child, by its handle
            await process.wait()
            await process.aclose()


async def send_line(process: Process, line: bytes) -> None:
    assert process.stdin is not None
    await process.stdin.send(line)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("mutual", [False, True], ids=["server-auth", "mutual-auth"])
async def test_openssl_s_client_against_our_server(pki: PKI, mutual: bool) -> None:
    context = server_context(
        pki.server.certfile,
        pki.server.keyfile,
        cafile=pki.cafile if mutual else None,
        require_client_certificate=mutual,
    )
    async with echo_server(DTLSServerConfig(context)) as (server, port):
        identity = ["-cert", str(pki.client.certfile), "-key", str(pki.client.keyfile)]
        args = [
            "s_client",
            "-dtls1_2",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(pki.cafile),
            "-verify_return_error",
            *(identity if mutual else []),
        ]
        async with openssl(*args) as (process, output):
            await output.wait_for(b"Verify return code: 0 (ok)")
            await send_line(process, b"typed line one\n")
            await output.wait_for(b"TYPED LINE ONE\n")
            await send_line(process, b"and two\n")
            await output.wait_for(b"AND TWO\n")
        assert server.statistics().dtls_handshakes == 1


async def test_our_server_refuses_s_client_without_a_certificate(pki: PKI) -> None:
    context = server_context(
        pki.server.certfile, pki.server.keyfile, cafile=pki.cafile, require_client_certificate=True
    )
    async with echo_server(DTLSServerConfig(context)) as (server, port):
        args = ["s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.cafile)]
        async with openssl(*args) as (_, output):
            await output.wait_for(b"alert")
        assert server.statistics().dtls_handshake_failures == 1
        assert server.statistics().dtls_sessions == 0


@asynccontextmanager
async def s_server(pki: PKI, *extra: str) -> AsyncGenerator[tuple[Process, Output, int]]:
    port = free_udp_port()
    args = [
        "s_server",
        "-dtls1_2",
        "-listen",  # OpenSSL's own cookie exchange: our client answers a HelloVerifyRequest
        "-accept",
        f"127.0.0.1:{port}",
        "-cert",
        str(pki.server.certfile),
        "-key",
        str(pki.server.keyfile),
        *extra,
    ]
    async with openssl(*args) as (process, output):
        await output.wait_for(b"ACCEPT")
        yield process, output, port


@pytest.mark.parametrize("mutual", [False, True], ids=["server-auth", "mutual-auth"])
async def test_connect_dtls_against_openssl_s_server(pki: PKI, mutual: bool) -> None:
    verify = ["-Verify", "1", "-CAfile", str(pki.cafile), "-verify_return_error"]
    async with s_server(pki, *(verify if mutual else [])) as (process, output, port):
        context = client_context(
            cafile=pki.cafile,
            certfile=pki.client.certfile if mutual else None,
            keyfile=pki.client.keyfile if mutual else None,
        )
        async with await connect_dtls("127.0.0.1", port, context) as client:
            cert = client.peer_certificate
            assert cert is not None
            assert cert.subject.rfc4514_string() == "CN=localhost"
            await client.send_packet(b"from anydgram\n")
            await output.wait_for(b"from anydgram\n")
            await send_line(process, b"from openssl\n")
            with anyio.fail_after(10):
                assert await client.recv_packet() == b"from openssl\n"
        if mutual:
            assert b"CN = test client" in output.text or b"CN=test client" in output.text


async def test_openssl_s_server_refuses_connect_dtls_without_a_certificate(pki: PKI) -> None:
    verify = ["-Verify", "1", "-CAfile", str(pki.cafile), "-verify_return_error"]
    async with s_server(pki, *verify) as (_, _, port):
        with pytest.raises(DTLSError, match="DTLS handshake failed"):
            await connect_dtls("127.0.0.1", port, client_context(cafile=pki.cafile))
