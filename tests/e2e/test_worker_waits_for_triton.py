"""A worker started before its Triton serves the models takes no job until it does, so no retry is spent waiting.

The real services come from scripts/sandbox. The worker, an `imaging-cds worker` process, is pointed at a loopback
port where nothing answers yet (a Triton still loading, a sidecar not yet up); later that port is relayed to the
sandbox's Triton, as when the server comes up.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from imaging_cds.config import Settings
from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.fhir.client import FhirClient
from imaging_cds.jobs.model import JobState, StudyRef
from imaging_cds.jobs.queue import JobQueue, queue_from_settings
from imaging_cds.sample.synthetic_ct import write_sample_study
from tests.conftest import service_env
from tests.services import (
    create_study_in_ehr,
    free_port,
    imaging_cds_process,
    store_folder,
    tcp_relay,
    wait_all_terminal,
    wait_for,
)

pytestmark = pytest.mark.services

WAITING = "taking no job until the inference server serves the models"


def test_a_worker_takes_no_job_until_triton_serves_its_models(sandbox: dict[str, str], tmp_path: Path) -> None:
    relay_port, metrics_port = free_port(), free_port()
    env = service_env(
        sandbox,
        IMAGING_CDS_QUEUE_PREFIX=f"waits-for-triton-{uuid.uuid4().hex[:8]}",  # a queue of its own
        IMAGING_CDS_TRITON_GRPC_URL=f"127.0.0.1:{relay_port}",
        IMAGING_CDS_METRICS_PORT=str(metrics_port),
        IMAGING_CDS_STABILITY_WINDOW_S="1",
    )
    settings = Settings.from_env(env)
    queue = queue_from_settings(settings)
    job_id = _queue_a_study(settings, queue, tmp_path / "study", seed=21)
    log = tmp_path / "worker.log"

    with imaging_cds_process("worker", env, log):
        wait_for("the worker to say it waits for Triton", lambda: WAITING in log.read_text(), timeout_s=60)
        time.sleep(5)  # a few of its polls
        served = _metric(metrics_port, "imaging_cds_worker_models_served")
        waited = queue.get(job_id)
        assert waited is not None
        assert (waited.state, waited.attempts, waited.deliveries) == (JobState.QUEUED, 0, 0), waited
        assert served == 0.0

        with tcp_relay(relay_port, _triton_address(sandbox)):
            (done,) = wait_all_terminal(queue, [job_id], timeout_s=180)
            assert _metric(metrics_port, "imaging_cds_worker_models_served") == 1.0

    assert done.state is JobState.SUCCEEDED, done.outcome
    assert done.attempts == 0  # no retry was spent on the wait
    text = log.read_text()
    assert "inference server ready after" in text
    assert text.count(WAITING) <= 2  # said once (and again only if the reason changed), not at every poll


def test_a_triton_outage_holds_the_queue_instead_of_spending_its_retries(
    sandbox: dict[str, str], tmp_path: Path
) -> None:
    relay_port, metrics_port = free_port(), free_port()
    env = service_env(
        sandbox,
        IMAGING_CDS_QUEUE_PREFIX=f"triton-outage-{uuid.uuid4().hex[:8]}",
        IMAGING_CDS_TRITON_GRPC_URL=f"127.0.0.1:{relay_port}",
        IMAGING_CDS_METRICS_PORT=str(metrics_port),
        IMAGING_CDS_STABILITY_WINDOW_S="1",
        IMAGING_CDS_RETRY_BASE_S="0.5",
        IMAGING_CDS_MODELS="lung-density",
    )
    settings = Settings.from_env(env)
    queue = queue_from_settings(settings)
    log = tmp_path / "worker.log"
    target = _triton_address(sandbox)

    with imaging_cds_process("worker", env, log):
        with tcp_relay(relay_port, target):
            wait_for("the worker to find its models served", lambda: "inference server ready after" in log.read_text())
        # Triton is gone. The next job finds it gone and goes back to the queue with one attempt spent; the worker
        # then takes no other job until Triton is back.
        first = _queue_a_study(settings, queue, tmp_path / "first", seed=22)
        wait_for("the worker to notice", lambda: "no longer serves the models" in log.read_text(), timeout_s=60)
        second = _queue_a_study(settings, queue, tmp_path / "second", seed=23)
        time.sleep(5)  # a few of its polls
        held = [queue.get(first), queue.get(second)]
        assert [(j.state, j.attempts) for j in held if j is not None] == [(JobState.QUEUED, 1), (JobState.QUEUED, 0)]
        assert held[1] is not None and held[1].deliveries == 0
        assert _metric(metrics_port, "imaging_cds_worker_models_served") == 0.0

        with tcp_relay(relay_port, target):
            ended = wait_all_terminal(queue, [first, second], timeout_s=180)
    assert [(j.state, j.attempts) for j in ended] == [(JobState.SUCCEEDED, 1), (JobState.SUCCEEDED, 0)], [
        j.outcome for j in ended
    ]


def test_a_worker_waiting_for_triton_stops_at_once_when_told(sandbox: dict[str, str], tmp_path: Path) -> None:
    env = service_env(
        sandbox,
        IMAGING_CDS_QUEUE_PREFIX=f"waits-for-triton-{uuid.uuid4().hex[:8]}",
        IMAGING_CDS_TRITON_GRPC_URL=f"127.0.0.1:{free_port()}",  # nothing answers there
        IMAGING_CDS_METRICS_PORT="0",
    )
    log = tmp_path / "worker.log"
    with imaging_cds_process("worker", env, log) as worker:
        wait_for("the worker to say it waits for Triton", lambda: WAITING in log.read_text(), timeout_s=60)
        worker.terminate()  # SIGTERM, as Kubernetes stops a pod
        assert worker.wait(timeout=10) == 0


def _queue_a_study(settings: Settings, queue: JobQueue, folder: Path, seed: int) -> str:
    """A synthetic chest CT stored in the PACS and announced in the EHR, and its job queued: the job's id."""
    sample = write_sample_study(folder, seed=seed, n_slices=110)
    with (
        FhirClient(settings.fhir_url) as fhir,
        PacsClient(settings.dicomweb_url, settings.dicomweb_username, settings.dicomweb_password) as pacs,
    ):
        store_folder(pacs, sample.study_dir)
        study = create_study_in_ehr(fhir, sample.study_instance_uid, settings.dicomweb_url, sample.n_instances)
    return queue.submit(StudyRef(study["id"], sample.study_instance_uid)).job_id


def _triton_address(sandbox: dict[str, str]) -> tuple[str, int]:
    host, port = sandbox["IMAGING_CDS_TRITON_GRPC_URL"].rsplit(":", 1)
    return host, int(port)


def _metric(port: int, name: str) -> float:
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the worker's metrics")
