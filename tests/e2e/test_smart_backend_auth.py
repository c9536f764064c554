"""SMART Backend Services against the FHIR server's own authorization server, scopes enforced.

The EHR (sekmet, started by ``scripts/sandbox up --only fhir --fhir-auth smart``) registers two clients with their
public keys: ``imaging-cds`` may write (``system/*.cud``), ``imaging-cds-no-report`` (RS384) may read and create
Observations, Devices and Provenances but not DiagnosticReports. Both ask for the same scopes; the EHR grants what
their registration allows. A worker with the second gets its write refused, and the job waits, visibly, to be
retried; a worker with the first then charts the report. Redis, Orthanc and Triton come from the shared sandbox.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imaging_cds.config import Settings
from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.fhir.client import FhirAuthError, FhirClient
from imaging_cds.fhir.smart import SmartBackendAuth
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.inference.triton import TritonBackend
from imaging_cds.jobs.model import JobState, StudyRef
from imaging_cds.jobs.queue import JobQueue, queue_from_settings
from imaging_cds.sample.synthetic_ct import SampleStudy, write_sample_study
from imaging_cds.worker.service import Worker
from tests.conftest import SANDBOX
from tests.fhir_validation import assert_valid_r4
from tests.services import create_study_in_ehr, store_folder

pytestmark = pytest.mark.services

SCOPES = "system/*.rs system/*.cud"
CLIENTS = [
    f"imaging-cds={SCOPES}",
    "imaging-cds-no-report@RS384=system/*.rs system/Observation.c system/Device.c system/Provenance.c",
]


@pytest.fixture(scope="module")
def smart_ehr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A second FHIR server, SMART-protected: its URL and the registered clients' key files."""
    state = tmp_path_factory.mktemp("smart-ehr")
    command = [sys.executable, str(SANDBOX), "up", "--only", "fhir", "--fhir-auth", "smart", "--json"]
    command += ["--state-dir", str(state), *(f"--fhir-smart-client={c}" for c in CLIENTS)]
    up = subprocess.run(command, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        yield json.loads(up.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([sys.executable, str(SANDBOX), "down", "--state-dir", str(state)], timeout=120)


def settings_for(sandbox: dict[str, str], ehr: dict[str, Any], client_id: str) -> Settings:
    client = ehr["fhir_smart_clients"][client_id]
    env = {k: v for k, v in sandbox.items() if k.startswith("IMAGING_CDS_")}
    env.update(
        IMAGING_CDS_FHIR_URL=ehr["IMAGING_CDS_FHIR_URL"],
        IMAGING_CDS_FHIR_AUTH="smart",
        IMAGING_CDS_FHIR_SMART_CLIENT_ID=client_id,
        IMAGING_CDS_FHIR_SMART_PRIVATE_KEY_FILE=client["private_key_file"],
        IMAGING_CDS_FHIR_SMART_SCOPE=SCOPES,  # both ask for the same; the EHR grants what it registered
        IMAGING_CDS_QUEUE_PREFIX="smart-e2e",
        IMAGING_CDS_RETRY_BASE_S="0.5",
        IMAGING_CDS_RETRY_CAP_S="1",
    )
    return Settings.from_env(env)


@pytest.fixture(scope="module")
def small_ct(sandbox: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> SampleStudy:
    sample = write_sample_study(tmp_path_factory.mktemp("smart-ct"), seed=41, n_slices=100)
    settings = Settings.from_env(sandbox)
    with PacsClient(settings.dicomweb_url, settings.dicomweb_username, settings.dicomweb_password) as pacs:
        store_folder(pacs, sample.study_dir)
    return sample


def run_once(settings: Settings, queue: JobQueue) -> None:
    """One delivery through a worker authenticated as ``settings`` names (as `imaging-cds worker` would)."""
    model = load_manifest(settings.model_repository / "lung-density")
    backend = TritonBackend(settings.triton_grpc_url)
    with (
        FhirClient.from_settings(settings) as fhir,
        PacsClient(settings.dicomweb_url, settings.dicomweb_username, settings.dicomweb_password) as pacs,
    ):
        worker = Worker(settings, queue, fhir, pacs, backend, model)
        try:
            delivery = queue.next_delivery(worker.consumer, block_ms=5000)
            assert delivery is not None, "no job was due"
            worker.handle(delivery)
        finally:
            backend.close()


def test_without_report_scopes_the_write_is_refused_and_the_job_waits_to_be_retried_then_lands(
    sandbox: dict[str, str], smart_ehr: dict[str, Any], small_ct: SampleStudy
) -> None:
    full = settings_for(sandbox, smart_ehr, "imaging-cds")
    limited = settings_for(sandbox, smart_ehr, "imaging-cds-no-report")
    with FhirClient.from_settings(full) as ehr:  # the EHR side: registers the patient, order and study
        study = create_study_in_ehr(
            ehr, small_ct.study_instance_uid, full.dicomweb_url, small_ct.n_instances, with_order=True
        )
    subject = study["subject"]["reference"]
    with FhirClient(full.fhir_url) as anonymous, pytest.raises(FhirAuthError, match="HTTP 401"):
        anonymous.read(f"ImagingStudy/{study['id']}")

    granted = SmartBackendAuth(
        limited.fhir_url,
        limited.fhir_smart_client_id,
        Path(limited.fhir_smart_private_key_file).read_bytes(),
        limited.fhir_smart_scope,
    )
    assert granted.algorithm == "RS384" and granted.token().scope == "system/*.rs"  # no DiagnosticReport.c
    granted.close()

    queue = queue_from_settings(full)
    queue.ensure_group()
    job_id = queue.submit(StudyRef(imaging_study_id=study["id"])).job_id

    run_once(limited, queue)
    job = queue.get(job_id)
    assert job is not None
    assert job.state is JobState.QUEUED and job.attempts == 1 and job.not_before > job.updated
    assert "retrying in" in job.outcome and "HTTP 403" in job.outcome and "SMART scopes" in job.outcome
    assert "do not permit 'c'" in job.outcome  # the EHR's own words on the missing scope
    with FhirClient.from_settings(full) as ehr:
        assert ehr.search("DiagnosticReport", {"subject": subject}) == []

    time.sleep(max(0.0, job.not_before - time.time()) + 0.1)
    run_once(full, queue)
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.SUCCEEDED, job.outcome
    with FhirClient.from_settings(full) as ehr:
        found = ehr.search("DiagnosticReport", {"patient": subject, "_include": "DiagnosticReport:result"})
        (report,) = [r for r in found if r["resourceType"] == "DiagnosticReport"]
        assert job.report_reference == f"DiagnosticReport/{report['id']}"
        assert report["status"] == "preliminary" and report["basedOn"] == study["basedOn"]
        assert len(found) == 1 + len(report["result"])
        written = [*found]
        for rtype in ("Device", "Provenance"):
            written += ehr.search(rtype, {})
    assert_valid_r4(written)
