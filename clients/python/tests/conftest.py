"""Fixtures: a real `integrad serve` on a free local port, and clients of it.

The binary is $INTEGRAD_BIN and the model repository $INTEGRAD_MODELS (the repository's
demo models: an image classifier, the tabular penguins model and the text sentiment model).
Without them the tests fail (they never skip): they exist to test against the real server.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

# These tests start processes (openssl, the server) while gRPC channels are open. Before 3.10
# subprocess forks (later ones use vfork, which skips fork handlers), and grpcio's fork
# handlers then abort the child now and again before it can exec. Read when grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import integrad  # noqa: E402

# A penguin the tabular demo classifies as Adelie with probability 0.996 (the README's row).
PENGUIN = {"bill_length_mm": 39.1, "bill_depth_mm": 18.7, "flipper_length_mm": 181.0,
           "body_mass_g": 3750.0, "island": 2, "sex": 1}
REVIEW = "The staff were friendly but the room was filthy."


def _required_path(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        pytest.fail(f"set {variable} (see clients/python/README.md): these tests need the real server")
    path = Path(value)
    if not path.exists():
        pytest.fail(f"{variable}={value} does not exist")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return _required_path("INTEGRAD_MODELS")


# The repository these tests are in (clients/python/tests/..): samples/ and proto/.
REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(args: list[str], log_dir: Path, env: dict | None = None, tls=None):
    """Runs `integrad serve --listen ADDRESS *args` until the block ends; yields its address
    once it is SERVING (by health: over `tls` when the server has TLS, and without a token,
    which health needs none of). The server's environment is this one without INTEGRAD_*
    variables (the server would read INTEGRAD_MODELS as --models), plus `env`."""
    binary = _required_path("INTEGRAD_BIN")
    address = f"127.0.0.1:{_free_port()}"
    log_path = log_dir / f"integrad-{address.replace(':', '-')}.log"
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("INTEGRAD_")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen([str(binary), "serve", "--listen", address, *args],
                                   stdout=log, stderr=subprocess.STDOUT, env={**server_env, **(env or {})})
    try:
        # Loading and warming up the three demo models takes seconds; 120 s leaves room for a
        # slow CI machine and a first fetch of ONNX Runtime.
        deadline = time.monotonic() + 120
        with integrad.Client(address, tls=tls) as client:
            while True:
                if process.poll() is not None:
                    pytest.fail(f"integrad serve exited ({process.returncode}):\n{log_path.read_text()}")
                try:
                    client.wait_until_serving(timeout=1)
                    break
                except TimeoutError as e:
                    if time.monotonic() > deadline:
                        pytest.fail(f"{e}; log:\n{log_path.read_text()}")
        yield address
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def address(models_dir, tmp_path_factory):
    with serve(["--models", str(models_dir)], tmp_path_factory.mktemp("server")) as address:
        yield address


@pytest.fixture(scope="session")
def client(address):
    with integrad.Client(address, timeout=300) as client:
        yield client


@pytest.fixture(scope="session")
def penguin_rows(models_dir):
    """The penguins demo's held-out rows (rows.jsonl): every feature by name."""
    with open(models_dir / "penguins" / "rows.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def coffee_png() -> bytes:
    """A photo the image demo classifies as espresso."""
    return (REPO / "samples" / "coffee.png").read_bytes()
