"""Shared fixtures. Tests marked ``services`` run against the real services that ``scripts/sandbox`` starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SANDBOX = REPO / "scripts" / "sandbox"


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Redis, Orthanc (DICOMweb), Triton and the FHIR server on loopback; stopped by PID at the end."""
    state = tmp_path_factory.mktemp("sandbox")
    up = subprocess.run(
        [sys.executable, str(SANDBOX), "up", "--state-dir", str(state), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if up.returncode != 0:
        subprocess.run([sys.executable, str(SANDBOX), "down", "--state-dir", str(state)], timeout=120)
        pytest.fail(f"scripts/sandbox up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
    info = json.loads(up.stdout.strip().splitlines()[-1])
    env = {k: str(v) for k, v in info.items() if k.startswith("IMAGING_CDS_")}
    env["_STATE_DIR"] = str(state)
    try:
        yield env
    finally:
        subprocess.run([sys.executable, str(SANDBOX), "down", "--state-dir", str(state)], timeout=120)


@pytest.fixture(scope="session")
def rebuilt_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model repository ``scripts/build_models.py`` writes, built once per session into a scratch folder."""
    out = tmp_path_factory.mktemp("rebuilt-models")
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_models.py"), "--out", str(out)], check=True, capture_output=True
    )
    return out


def service_env(sandbox: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGING_CDS_")}
    env.update({k: v for k, v in sandbox.items() if k.startswith("IMAGING_CDS_")})
    env.update(extra)
    return env


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How many FHIR resources passed both the R4 JSON schema and Medplum's validator in this run."""
    from tests.fhir_validation import VALIDATED

    if VALIDATED:
        counts = ", ".join(f"{n} {rtype}" for rtype, n in sorted(VALIDATED.items()))
        terminalreporter.write_line(
            f"FHIR R4 validation (JSON schema + Medplum): {sum(VALIDATED.values())} resources passed ({counts})"
        )
