"""Real S3-protocol servers on loopback for the store tests.

Two independent implementations, each a subprocess speaking S3 over HTTP:

* moto's server mode (``python -m moto.server``): broad API coverage, lifecycle rules included, but it
  accepts any credentials and never checks a presigned URL's signature or expiry.
* nanio (``nanio serve``): a small filesystem-backed S3 server that verifies SigV4 signatures, header
  and query-string (presigned) alike, and refuses expired URLs; it has no lifecycle API.

Between them the suite sees every behaviour S3Store relies on. Credentials reach S3Store through the
environment (boto3's usual chain), never through its arguments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from tests.conftest import free_port

ACCESS_KEY = "sdserve-test-access"
SECRET_KEY = "sdserve-test-secret-0123456789"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """One running S3-protocol server."""

    name: str
    endpoint: str
    checks_signatures: bool
    """Verifies SigV4 signatures and presigned URL expiry."""
    supports_lifecycle: bool

    def admin(self) -> Any:
        """A plain boto3 client with the test credentials, for setting up and inspecting buckets."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def new_bucket(self) -> str:
        name = f"sdserve-{uuid.uuid4().hex[:16]}"
        self.admin().create_bucket(Bucket=name)
        return name


def _start(argv: list[str], env: dict[str, str], endpoint: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SDSERVE_"))}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    proc = _start(argv, _server_env(), endpoint, log)
    yield S3Server("moto", endpoint, checks_signatures=False, supports_lifecycle=True)
    _stop(proc)


@pytest.fixture(scope="session")
def nanio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    binary = shutil.which("nanio") or str(Path(sys.executable).with_name("nanio"))
    folder = tmp_path_factory.mktemp("nanio")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = _server_env() | {"NANIO_ACCESS_KEY": ACCESS_KEY, "NANIO_SECRET_KEY": SECRET_KEY, "NANIO_REGION": REGION}
    argv = [binary, "serve", "--data-dir", str(folder / "data"), "--host", "127.0.0.1", "--port", str(port)]
    proc = _start(argv, env, endpoint, folder / "nanio.log")
    yield S3Server("nanio", endpoint, checks_signatures=True, supports_lifecycle=False)
    _stop(proc)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Test credentials in the environment (the first link of boto3's chain), nothing else."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
