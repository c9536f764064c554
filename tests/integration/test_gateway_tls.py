"""The gateway's gRPC API over TLS, with a certificate made for the test; graceful stop on SIGTERM."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import service_env
from tests.services import free_port, imaging_cds_process, wait_for

pytestmark = pytest.mark.services


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_grpc_api_serves_tls_only_when_configured_and_stops_gracefully(sandbox: dict[str, str], tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    http_port, grpc_port = free_port(), free_port()
    env = service_env(
        sandbox,
        IMAGING_CDS_HTTP_PORT=str(http_port),
        IMAGING_CDS_GRPC_PORT=str(grpc_port),
        IMAGING_CDS_REGISTER_SUBSCRIPTION="false",
        IMAGING_CDS_SUBSCRIPTION_MODE="none",
        IMAGING_CDS_POLL_ONLY_INTERVAL_S="3600",
        IMAGING_CDS_GRPC_TLS_CERT_FILE=str(cert),
        IMAGING_CDS_GRPC_TLS_KEY_FILE=str(key),
        IMAGING_CDS_LOG_LEVEL="DEBUG",
    )
    log = tmp_path / "gateway.log"
    with imaging_cds_process("gateway", env, log) as proc:
        wait_for("gateway", lambda: httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200)
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"127.0.0.1:{grpc_port}", credentials) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as plaintext, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=3)
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    text = log.read_text()
    assert "(TLS)" in text and "gateway stopped" in text
