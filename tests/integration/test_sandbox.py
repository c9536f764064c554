"""scripts/sandbox brings up the real services on loopback and takes them down again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[2]
SANDBOX = REPO / "scripts" / "sandbox"

ENV_NAMES = {
    "IMAGING_CDS_REDIS_URL",
    "IMAGING_CDS_DICOMWEB_URL",
    "IMAGING_CDS_ORTHANC_URL",
    "IMAGING_CDS_DICOMWEB_USERNAME",
    "IMAGING_CDS_DICOMWEB_PASSWORD",
    "IMAGING_CDS_TRITON_GRPC_URL",
    "IMAGING_CDS_TRITON_HTTP_URL",
    "IMAGING_CDS_FHIR_URL",
}


def sandbox(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SANDBOX), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def pid_gone(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it (it holds no port and runs no code)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox")


@pytest.fixture(scope="module")
def env(state_dir: Path) -> Iterator[dict[str, Any]]:
    res = sandbox("up", "--json", "--state-dir", str(state_dir))
    try:
        assert res.returncode == 0, f"sandbox up failed:\n{res.stderr}"
        yield json.loads(res.stdout)
    finally:
        sandbox("down", "--state-dir", str(state_dir), timeout=120)


def test_up_prints_every_variable(env: dict[str, Any], state_dir: Path) -> None:
    assert set(env) >= ENV_NAMES
    assert set(env["pids"]) == {"redis", "orthanc", "triton", "fhir"}
    recorded = json.loads((state_dir / "sandbox.json").read_text())
    assert {n: s["pid"] for n, s in recorded["services"].items()} == env["pids"]
    for name in ENV_NAMES - {"IMAGING_CDS_DICOMWEB_USERNAME", "IMAGING_CDS_DICOMWEB_PASSWORD"}:
        assert "127.0.0.1:" in env[name], name


def test_redis_answers(env: dict[str, Any]) -> None:
    client = redis.Redis.from_url(env["IMAGING_CDS_REDIS_URL"])
    try:
        assert client.ping() is True
        assert client.config_get("appendonly") == {"appendonly": "yes"}
    finally:
        client.close()


def test_orthanc_requires_the_printed_credentials(env: dict[str, Any]) -> None:
    url = env["IMAGING_CDS_ORTHANC_URL"]
    auth = (env["IMAGING_CDS_DICOMWEB_USERNAME"], env["IMAGING_CDS_DICOMWEB_PASSWORD"])
    r = requests.get(f"{url}/system", auth=auth, timeout=10)
    assert r.status_code == 200
    assert "DicomAet" in r.json()
    assert requests.get(f"{url}/system", timeout=10).status_code == 401
    assert requests.get(f"{url}/system", auth=(auth[0], "wrong"), timeout=10).status_code == 401
    r = requests.get(f"{env['IMAGING_CDS_DICOMWEB_URL']}/studies", auth=auth, timeout=10)
    assert r.status_code == 200
    assert requests.get(f"{env['IMAGING_CDS_DICOMWEB_URL']}/studies", timeout=10).status_code == 401


def test_triton_ready(env: dict[str, Any]) -> None:
    r = requests.get(f"{env['IMAGING_CDS_TRITON_HTTP_URL']}/v2/health/ready", timeout=10)
    assert r.status_code == 200
    assert requests.get(f"{env['IMAGING_CDS_TRITON_HTTP_URL']}/v2", timeout=10).json()["version"] == "2.51.0"


def test_fhir_metadata(env: dict[str, Any]) -> None:
    r = requests.get(f"{env['IMAGING_CDS_FHIR_URL']}/metadata", timeout=10)
    assert r.status_code == 200
    body = r.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"


def test_status_then_down_stops_every_pid(env: dict[str, Any], state_dir: Path) -> None:
    assert sandbox("status", "--state-dir", str(state_dir)).returncode == 0
    t0 = time.monotonic()
    res = sandbox("down", "--state-dir", str(state_dir), timeout=120)
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 30
    leftover = {name: pid for name, pid in env["pids"].items() if not pid_gone(pid)}
    assert not leftover, f"still running after down: {leftover}"
    # safe to call twice; status now reports the services as stopped
    assert sandbox("down", "--state-dir", str(state_dir), timeout=120).returncode == 0
    assert sandbox("status", "--state-dir", str(state_dir)).returncode == 1
    assert os.path.exists(state_dir / "sandbox.json")  # down removes only the pid records
