"""The DTLS example pair, run as programs: the client against the server, on every backend."""

from __future__ import annotations

import pytest

from dtls_harness import PKI, make_pki
from example_harness import ExampleProcess, run_example


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize("backend", ["asyncio", "uvloop", "trio"])
def test_example_client_against_example_server(pki: PKI, backend: str) -> None:
    server_args = ["--port", "0", "--backend", backend]
    server_args += ["--cert", str(pki.server.certfile), "--key", str(pki.server.keyfile)]
    with ExampleProcess("dtls_echo_server.py", *server_args) as server:
        _, port = server.address()
        result = run_example(
            "dtls_echo_client.py",
            "--port",
            str(port),
            "--cafile",
            str(pki.cafile),
            "--backend",
            backend,
            "hello",
            "hello world",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["hello", "hello world"]
        assert "cipher:" in result.stderr
        refused = run_example(
            "dtls_echo_client.py", "--port", str(port), "--cafile", str(pki.other_cafile), "x"
        )
        assert refused.returncode == 1
        assert "certificate verify failed" in refused.stderr
        assert server.stop() == 0, server.stderr()
        assert "1 handshakes, 1 failed" in server.stderr()


def test_example_server_requires_client_certificates(pki: PKI) -> None:
    server_args = ["--port", "0", "--cert", str(pki.server.certfile)]
    server_args += ["--key", str(pki.server.keyfile), "--cafile", str(pki.cafile)]
    with ExampleProcess("dtls_echo_server.py", *server_args, "--require-client-cert") as server:
        _, port = server.address()
        common = ["--port", str(port), "--cafile", str(pki.cafile), "--timeout", "3"]
        identity = ["--cert", str(pki.client.certfile), "--key", str(pki.client.keyfile)]
        accepted = run_example("dtls_echo_client.py", *common, *identity, "me")
        assert accepted.returncode == 0, accepted.stderr
        assert accepted.stdout.splitlines() == ["me"]
        refused = run_example("dtls_echo_client.py", *common, "anonymous")
        assert refused.returncode == 1
        assert "handshake failed" in refused.stderr
        assert server.stop() == 0, server.stderr()
