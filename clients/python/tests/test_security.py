"""A server that asks for a bearer token or TLS (docs/security.md), and the Client's token
and tls arguments."""

from __future__ import annotations

import subprocess

import grpc
import pytest

import integrad

from conftest import PENGUIN, serve

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def penguins_only(models_dir):
    """Serve the penguins model alone (as "model", the only one, so the default): it loads in
    a fraction of a second where the three demo models take seconds."""
    return ["--model-file", str(models_dir / "penguins" / "model.onnx")]


@pytest.fixture(scope="module")
def with_token(penguins_only, tmp_path_factory):
    env = {"INTEGRAD_AUTH_TOKEN": TOKEN}
    with serve(penguins_only, tmp_path_factory.mktemp("token"), env=env) as address:
        yield address


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_missing_or_wrong_token_is_unauthenticated(with_token, token):
    with integrad.Client(with_token, token=token) as client:
        with pytest.raises(integrad.Error) as raised:
            client.models()
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_the_right_token_is_let_in(with_token):
    with integrad.Client(with_token, token=TOKEN) as client:
        assert client.predict(features=PENGUIN).top[0].label == "Adelie"
        assert client.explain(features=PENGUIN, steps=8).label == "Adelie"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and a server certificate it signed for 127.0.0.1, made by the openssl CLI."""
    d = tmp_path_factory.mktemp("pki")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    for key in ("ca.key", "server.key"):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    openssl("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test CA")
    openssl("req", "-new", "-key", "server.key", "-out", "server.csr", "-subj", "/CN=integrad")
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "server.ext")
    return d


@pytest.fixture(scope="module")
def with_tls(penguins_only, pki):
    args = [*penguins_only, "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    with serve(args, pki, tls=pki / "ca.pem") as address:
        yield address


@pytest.mark.parametrize("tls", ["path", "bytes"])
def test_tls_with_the_ca_as_a_path_or_bytes(with_tls, pki, tls):
    ca = pki / "ca.pem" if tls == "path" else (pki / "ca.pem").read_bytes()
    with integrad.Client(with_tls, tls=ca) as client:
        assert client.predict(features=PENGUIN).top[0].label == "Adelie"


def test_plaintext_against_tls_is_unavailable(with_tls):
    with integrad.Client(with_tls, timeout=10) as client:
        with pytest.raises(integrad.Error) as raised:
            client.models()
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
