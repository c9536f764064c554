"""Intake and job engine that lose nothing, on the real services: worker crashes, a Redis restart, duplicate and
missing notifications, Subscription failures, topic-based notifications and malformed input."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imaging_cds.config import Settings
from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.fhir.client import FhirClient
from imaging_cds.jobs.model import JobState
from imaging_cds.jobs.queue import JobQueue, queue_from_settings
from imaging_cds.sample.synthetic_ct import SampleStudy, write_sample_study
from imaging_cds.v1 import jobs_pb2, jobs_pb2_grpc
from tests.conftest import service_env
from tests.services import (
    RedisProcess,
    create_study_in_ehr,
    free_port,
    imaging_cds_process,
    store_files,
    store_folder,
    wait_all_terminal,
    wait_for,
)

pytestmark = pytest.mark.services

SECRET = "reliability-secret"
FAST = {  # short timeouts so crash recovery happens within a test's time
    "IMAGING_CDS_WEBHOOK_SECRET": SECRET,
    "IMAGING_CDS_VISIBILITY_TIMEOUT_S": "3",
    "IMAGING_CDS_STABILITY_WINDOW_S": "1",
    "IMAGING_CDS_RETRY_BASE_S": "0.5",
    "IMAGING_CDS_RETRY_CAP_S": "4",
    "IMAGING_CDS_MAX_DELIVERIES": "60",
    "IMAGING_CDS_SUBSCRIPTION_CHECK_S": "2",
    # These tests are about intake and the job engine, not the models: one model keeps each job short. Several
    # models per study are tested end to end in test_study_to_report.py.
    "IMAGING_CDS_MODELS": "lung-density",
}


class Services:
    """A gateway and workers as child processes, each stopped by PID; workers can be killed and replaced."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.settings = Settings.from_env(env)
        self.http = f"http://127.0.0.1:{self.settings.http_port}"
        self.webhook = self.settings.public_webhook_url
        self._stack = ExitStack()
        self.workers: list[Any] = []
        self._n = 0

    def start(self, workers: int = 1, gateway: bool = True) -> Services:
        if gateway:
            self._stack.enter_context(imaging_cds_process("gateway", self.env, self.logs / "gateway.log"))
            wait_for("gateway ready", lambda: httpx.get(f"{self.http}/readyz").status_code == 200)
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> None:
        self._n += 1
        self.workers.append(
            self._stack.enter_context(imaging_cds_process("worker", self.env, self.logs / f"worker-{self._n}.log"))
        )

    def kill_random_worker(self, rng: random.Random) -> None:
        victim = rng.choice([w for w in self.workers if w.poll() is None])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        self.add_worker()

    def close(self) -> None:
        self._stack.close()


def make_env(sandbox: dict[str, str], **extra: str) -> dict[str, str]:
    http_port, grpc_port = free_port(), free_port()
    return service_env(
        sandbox,
        IMAGING_CDS_HTTP_PORT=str(http_port),
        IMAGING_CDS_GRPC_PORT=str(grpc_port),
        IMAGING_CDS_PUBLIC_WEBHOOK_URL=f"http://127.0.0.1:{http_port}/fhir/notify",
        **{**FAST, **extra},
    )


@pytest.fixture(scope="module")
def studies(sandbox: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> list[SampleStudy]:
    """Twelve small chest CTs (100 slices), stored in Orthanc; each test uses its own (results are per DICOM study)."""
    folder = tmp_path_factory.mktemp("reliability")
    found = [write_sample_study(folder / str(seed), seed=seed, n_slices=100) for seed in range(20, 32)]
    settings = Settings.from_env(sandbox)
    with PacsClient(settings.dicomweb_url, settings.dicomweb_username, settings.dicomweb_password) as pacs:
        for s in found:
            store_folder(pacs, s.study_dir)
    return found


@pytest.fixture
def fhir(sandbox: dict[str, str]) -> Iterator[FhirClient]:
    with FhirClient(Settings.from_env(sandbox).fhir_url) as client:
        yield client


def announce(fhir: FhirClient, sample: SampleStudy, dicomweb_url: str) -> dict[str, Any]:
    return create_study_in_ehr(fhir, sample.study_instance_uid, dicomweb_url, sample.n_instances)


def reports_for(fhir: FhirClient, study: dict[str, Any]) -> list[dict[str, Any]]:
    return fhir.search("DiagnosticReport", {"subject": study["subject"]["reference"]})


def job_ids_for(queue: JobQueue, studies: list[dict[str, Any]], timeout_s: float = 60) -> list[str]:
    wanted = {s["id"] for s in studies}

    def found() -> list[str] | None:
        jobs = {j.study.imaging_study_id: j.job_id for j in queue.list_jobs(limit=500)}
        return [jobs[i] for i in wanted] if wanted <= set(jobs) else None

    return wait_for("a job for every study", found, timeout_s=timeout_s)


def test_twenty_worker_kills_lose_no_job_and_duplicate_no_report(
    sandbox: dict[str, str], studies: list[SampleStudy], fhir: FhirClient, tmp_path: Path
) -> None:
    env = make_env(sandbox)
    services = Services(env, tmp_path).start(workers=3)
    rng = random.Random(7)
    try:
        queue = queue_from_settings(services.settings)
        wait_for("Subscription active", lambda: _active_subscription(fhir, services.webhook))
        announced = [announce(fhir, s, services.settings.dicomweb_url) for s in studies[:5]]
        ids = job_ids_for(queue, announced)
        for _ in range(20):  # SIGKILL a random worker at a random point, start a replacement
            time.sleep(rng.uniform(0.3, 1.5))
            services.kill_random_worker(rng)
        jobs = wait_all_terminal(queue, ids, timeout_s=240)
    finally:
        services.close()
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * len(announced), [j.outcome for j in jobs]
    assert sum(j.deliveries for j in jobs) > len(jobs), "no job was ever interrupted: the test proved nothing"
    for study in announced:
        (report,) = reports_for(fhir, study)
        # as many Observations as the report's results (measurements, the emphysema finding, radiomics), once each
        assert len(fhir.search("Observation", {"subject": study["subject"]["reference"]})) == len(report["result"])


def test_a_redis_restart_mid_run_loses_no_job(
    sandbox: dict[str, str], studies: list[SampleStudy], fhir: FhirClient, tmp_path: Path
) -> None:
    own_redis = RedisProcess(tmp_path / "redis")
    own_redis.start()
    env = make_env(
        sandbox,
        IMAGING_CDS_REDIS_URL=own_redis.url,
        IMAGING_CDS_REGISTER_SUBSCRIPTION="false",
        IMAGING_CDS_QUEUE_PREFIX="restart",
    )
    services = Services(env, tmp_path).start(workers=1)
    try:
        stub = jobs_pb2_grpc.JobServiceStub(grpc.insecure_channel(f"127.0.0.1:{services.settings.grpc_port}"))
        fresh = [announce(fhir, s, services.settings.dicomweb_url) for s in studies[5:8]]
        ids = [stub.Submit(_submit(s["id"]), timeout=10).job_id for s in fresh]
        time.sleep(1.0)  # the first job is under way
        own_redis.stop()
        time.sleep(2.0)  # gateway and worker see Redis gone
        own_redis.start()
        queue = queue_from_settings(services.settings)
        jobs = wait_all_terminal(queue, ids, timeout_s=180)
    finally:
        services.close()
        own_redis.stop()
    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 3, [j.outcome for j in jobs]
    for study in fresh:
        assert len(reports_for(fhir, study)) == 1


def test_nineteen_duplicate_notifications_make_one_job_and_one_report(
    sandbox: dict[str, str], studies: list[SampleStudy], fhir: FhirClient, tmp_path: Path
) -> None:
    env = make_env(sandbox, IMAGING_CDS_REGISTER_SUBSCRIPTION="false", IMAGING_CDS_POLL_INTERVAL_S="3600")
    services = Services(env, tmp_path).start(workers=1)
    try:
        study = announce(fhir, studies[8], services.settings.dicomweb_url)
        resource = fhir.read(f"ImagingStudy/{study['id']}")

        def deliver(_: int) -> str:
            reply = httpx.put(
                f"{services.webhook}/ImagingStudy/{study['id']}",
                content=json.dumps(resource),
                headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/fhir+json"},
                timeout=10,
            )
            assert reply.status_code == 202, reply.text
            return str(reply.json()["job_id"])

        with ThreadPoolExecutor(10) as pool:  # ten at once...
            job_ids = list(pool.map(deliver, range(10)))
        for i in range(9):  # ...and nine more spread over two minutes, while the job runs and after it ended
            time.sleep(13)
            job_ids.append(deliver(10 + i))
        assert len(set(job_ids)) == 1
        queue = queue_from_settings(services.settings)
        (job,) = wait_all_terminal(queue, job_ids[:1], timeout_s=120)
    finally:
        services.close()
    assert job.state is JobState.SUCCEEDED and job.deliveries == 1
    assert len(reports_for(fhir, study)) == 1


def test_a_study_is_analysed_only_once_all_its_images_are_in_the_pacs(
    sandbox: dict[str, str], fhir: FhirClient, tmp_path: Path
) -> None:
    sample = write_sample_study(tmp_path / "late", seed=30, n_slices=110)
    files = sorted(sample.study_dir.rglob("*.dcm"))
    env = make_env(sandbox, IMAGING_CDS_REGISTER_SUBSCRIPTION="false", IMAGING_CDS_QUEUE_PREFIX="late")
    services = Services(env, tmp_path).start(workers=1)
    s = services.settings
    try:
        with PacsClient(s.dicomweb_url, s.dicomweb_username, s.dicomweb_password) as pacs:
            store_files(pacs, files[:60])  # the modality is still sending
            study = announce(fhir, sample, s.dicomweb_url)  # numberOfInstances: 110
            stub = jobs_pb2_grpc.JobServiceStub(grpc.insecure_channel(f"127.0.0.1:{s.grpc_port}"))
            job_id = stub.Submit(_submit(study["id"]), timeout=10).job_id
            queue = queue_from_settings(s)
            waiting = wait_for(
                "the job to wait for images",
                lambda: (j := queue.get(job_id)) and j.outcome.startswith("waiting for images") and j,
                timeout_s=30,
            )
            assert waiting.state is JobState.QUEUED and "60 of the 110" in waiting.outcome
            assert reports_for(fhir, study) == []
            store_files(pacs, files[60:])
        (job,) = wait_all_terminal(queue, [job_id], timeout_s=120)
    finally:
        services.close()
    assert job.state is JobState.SUCCEEDED and job.attempts == 0  # waiting is not a failure
    assert len(reports_for(fhir, study)) == 1


def test_transient_failures_are_retried_with_backoff_then_dead_lettered(
    sandbox: dict[str, str], studies: list[SampleStudy], fhir: FhirClient, tmp_path: Path
) -> None:
    # The PACS is unreachable. (A Triton outage holds the queue instead: test_worker_waits_for_triton.py.)
    env = make_env(
        sandbox,
        IMAGING_CDS_DICOMWEB_URL=f"http://127.0.0.1:{free_port()}/dicom-web",
        IMAGING_CDS_DICOMWEB_RETRIES="0",  # the job engine's retries are under test, not the HTTP client's
        IMAGING_CDS_MAX_ATTEMPTS="3",
        IMAGING_CDS_REGISTER_SUBSCRIPTION="false",
        IMAGING_CDS_QUEUE_PREFIX="transient",
    )
    services = Services(env, tmp_path).start(workers=1)
    try:
        study = announce(fhir, studies[0], services.settings.dicomweb_url)
        stub = jobs_pb2_grpc.JobServiceStub(grpc.insecure_channel(f"127.0.0.1:{services.settings.grpc_port}"))
        job_id = stub.Submit(_submit(study["id"]), timeout=10).job_id
        queue = queue_from_settings(services.settings)
        started = time.monotonic()
        (job,) = wait_all_terminal(queue, [job_id], timeout_s=90)
        elapsed = time.monotonic() - started
        dead = queue.dead_letters()
    finally:
        services.close()
    assert job.state is JobState.FAILED and job.attempts == 3 and "gave up after 3 attempts" in job.outcome
    assert elapsed >= 0.25 + 0.5  # the two retries waited at least half their backoff ceilings (0.5 s, 1 s)
    assert "PACS" in job.outcome
    assert [d.job_id for d in dead] == [job_id]
    assert reports_for(fhir, study) == []


def test_a_study_ordered_stat_is_queued_as_stat(sandbox: dict[str, str], fhir: FhirClient, tmp_path: Path) -> None:
    env = make_env(sandbox, IMAGING_CDS_QUEUE_PREFIX="priority", IMAGING_CDS_POLL_INTERVAL_S="3600")
    services = Services(env, tmp_path).start(workers=0)
    try:
        wait_for("Subscription active", lambda: _active_subscription(fhir, services.webhook))
        queue = queue_from_settings(services.settings)
        kinds = {}
        for priority in ("stat", "routine"):
            order = fhir.create(
                {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "priority": priority,
                    "code": {"text": "CT chest"},
                    "subject": {"reference": "Patient/x"},
                }
            )
            study = fhir.create(
                {
                    "resourceType": "ImagingStudy",
                    "status": "available",
                    "subject": {"reference": "Patient/x"},
                    "identifier": [
                        {"system": "urn:dicom:uid", "value": f"urn:oid:1.2.826.0.1.3680043.8.498.55{len(kinds)}"}
                    ],
                    "basedOn": [{"reference": f"ServiceRequest/{order['id']}"}],
                }
            )
            kinds[priority] = job_ids_for(queue, [study], timeout_s=20)[0]
        assert queue.get(kinds["stat"]).priority.value == "stat"  # type: ignore[union-attr]
        assert queue.get(kinds["routine"]).priority.value == "routine"  # type: ignore[union-attr]
    finally:
        services.close()


def test_a_notification_that_never_arrives_is_caught_by_the_reconciler(
    sandbox: dict[str, str], studies: list[SampleStudy], fhir: FhirClient, tmp_path: Path
) -> None:
    env = make_env(
        sandbox,
        IMAGING_CDS_SUBSCRIPTION_MODE="none",
        IMAGING_CDS_POLL_ONLY_INTERVAL_S="3",
        IMAGING_CDS_QUEUE_PREFIX="polling",
    )
    services = Services(env, tmp_path).start(workers=0)
    try:
        queue = queue_from_settings(services.settings)
        study = announce(fhir, studies[9], services.settings.dicomweb_url)  # no Subscription: nobody is told
        started = time.monotonic()
        job_ids_for(queue, [study], timeout_s=20)
        assert time.monotonic() - started < 3 + 5  # within the interval (and a little scheduling slack)
    finally:
        services.close()


def test_a_subscription_the_ehr_put_in_error_is_recreated(
    sandbox: dict[str, str], fhir: FhirClient, tmp_path: Path
) -> None:
    env = make_env(sandbox, IMAGING_CDS_QUEUE_PREFIX="keeper")
    services = Services(env, tmp_path).start(workers=0)
    try:
        first = wait_for("Subscription active", lambda: _active_subscription(fhir, services.webhook))
        broken = fhir.read(f"Subscription/{first}")
        assert broken is not None
        broken.update(status="error", error="Delivery failed: HTTP 500")
        fhir.update(broken)
        second = wait_for(
            "a new active Subscription",
            lambda: (s := _active_subscription(fhir, services.webhook)) and s != first and s,
            timeout_s=20,
        )
    finally:
        services.close()
    assert second != first
    assert fhir.read(f"Subscription/{first}") is None  # the broken one was removed, not left beside


def test_topic_based_notifications_queue_studies_and_a_gap_triggers_recovery(
    sandbox: dict[str, str], studies: list[SampleStudy], fhir: FhirClient, tmp_path: Path
) -> None:
    topic = _ensure_imaging_topic(fhir)
    env = make_env(
        sandbox,
        IMAGING_CDS_SUBSCRIPTION_MODE="backport",
        IMAGING_CDS_SUBSCRIPTION_TOPIC=topic,
        IMAGING_CDS_POLL_INTERVAL_S="3600",
        IMAGING_CDS_QUEUE_PREFIX="backport",
    )
    services = Services(env, tmp_path).start(workers=0)
    try:
        queue = queue_from_settings(services.settings)
        sub_id = wait_for("handshake accepted", lambda: _active_subscription(fhir, services.webhook), timeout_s=20)
        notified = announce(fhir, studies[10], services.settings.dicomweb_url)
        job_ids_for(queue, [notified], timeout_s=20)
        # A study the EHR announced while we missed its notification (not seen by the gateway)...
        missed = announce(fhir, studies[11], "http://unused.invalid/dicom-web")
        time.sleep(1)
        # ...shows up as a gap: the next heartbeat says more events happened than we received.
        heartbeat = _backport_bundle(sub_id, "heartbeat", events_since=99)
        reply = httpx.post(
            services.webhook,
            content=json.dumps(heartbeat),
            headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/fhir+json"},
        )
        assert reply.status_code == 200
        job_ids_for(queue, [missed], timeout_s=15)  # recovered at once, not after the 3600 s poll interval
    finally:
        services.close()


@pytest.fixture(scope="module")
def gateway_only(sandbox: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    env = make_env(
        sandbox,
        IMAGING_CDS_REGISTER_SUBSCRIPTION="false",
        IMAGING_CDS_QUEUE_PREFIX="fuzz",
        IMAGING_CDS_POLL_INTERVAL_S="3600",
    )
    services = Services(env, tmp_path_factory.mktemp("fuzz")).start(workers=0)
    yield services
    services.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=15), inner, max_size=6),
    max_leaves=25,
)
resource_like = st.fixed_dictionaries(
    {"resourceType": st.sampled_from(["ImagingStudy", "Bundle", "Patient", "Parameters"])},
    optional={
        "id": st.text(max_size=70),
        "status": st.text(max_size=12),
        "type": st.sampled_from(["history", "x"]),
        "identifier": json_values,
        "subject": json_values,
        "entry": json_values,
    },
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(st.binary(min_size=1, max_size=400), json_values.map(json.dumps), resource_like.map(json.dumps)),
    path_id=st.one_of(st.none(), st.text(min_size=1, max_size=80)),
)
def test_malformed_webhook_input_gets_4xx_and_enqueues_nothing(gateway_only: Services, body: Any, path_id: Any) -> None:
    queue = queue_from_settings(gateway_only.settings)
    before = queue.stream_length()
    url = gateway_only.webhook + (f"/ImagingStudy/{quote(path_id, safe='')}" if path_id else "")
    content = body if isinstance(body, bytes) else body.encode()
    if not content.strip():
        content = b"{}"
    reply = httpx.request(
        "PUT" if path_id else "POST",
        url,
        content=content,
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/fhir+json"},
    )
    assert reply.status_code in (200, 400, 404, 405), reply.text
    assert queue.stream_length() == before
    assert httpx.get(f"{gateway_only.http}/healthz").status_code == 200


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    study_id=st.text(max_size=80).filter(lambda s: not s or any(c not in _FHIR_ID_CHARS for c in s) or len(s) > 64),
    uid=st.text(max_size=70),
    priority=st.text(max_size=10),
    job_id=st.text(max_size=80),
)
def test_malformed_grpc_requests_get_invalid_argument_and_enqueue_nothing(
    gateway_only: Services, study_id: str, uid: str, priority: str, job_id: str
) -> None:
    queue = queue_from_settings(gateway_only.settings)
    before = queue.stream_length()
    with grpc.insecure_channel(f"127.0.0.1:{gateway_only.settings.grpc_port}") as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        request = jobs_pb2.SubmitRequest(
            study=jobs_pb2.StudyReference(imaging_study_id=study_id, study_instance_uid=uid), priority=priority
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Submit(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5)
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    assert queue.stream_length() == before


def test_operators_list_and_cancel_jobs_and_see_models_over_grpc(gateway_only: Services) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{gateway_only.settings.grpc_port}") as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        job_id = stub.Submit(_submit("operator-check", "stat"), timeout=5).job_id
        queued = stub.ListJobs(jobs_pb2.ListJobsRequest(state=jobs_pb2.JOB_STATE_QUEUED), timeout=5)
        assert job_id in [j.job_id for j in queued.jobs]
        cancelled = stub.CancelJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5)
        assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
        with pytest.raises(grpc.RpcError) as again:
            stub.CancelJob(jobs_pb2.GetJobRequest(job_id=job_id), timeout=5)
        assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        models = stub.ListModels(jobs_pb2.ListModelsRequest(), timeout=5).models
        assert [(m.name, m.triton_model) for m in models] == [("lung-density", "lung-density")]


_FHIR_ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


def _submit(study_id: str, priority: str = "") -> jobs_pb2.SubmitRequest:
    return jobs_pb2.SubmitRequest(study=jobs_pb2.StudyReference(imaging_study_id=study_id), priority=priority)


def _active_subscription(fhir: FhirClient, endpoint: str) -> str | None:
    for s in fhir.search("Subscription", {"url": endpoint}):
        if s["channel"]["endpoint"] == endpoint and s["status"] == "active":
            return str(s["id"])
    return None


def _ensure_imaging_topic(fhir: FhirClient) -> str:
    """An EHR publishes its topics; the sandbox EHR gets one for available ImagingStudies (as a Basic resource)."""
    url = "http://imaging-cds.test/SubscriptionTopic/imagingstudy-available"
    st_ext = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"
    fhir.update(
        {
            "resourceType": "Basic",
            "id": "topic-imagingstudy-available",
            "modifierExtension": [{"url": f"{st_ext}.status", "valueCode": "active"}],
            "code": {"coding": [{"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
            "extension": [
                {"url": f"{st_ext}.url", "valueUri": url},
                {"url": f"{st_ext}.title", "valueString": "ImagingStudy available"},
                {
                    "url": f"{st_ext}.resourceTrigger",
                    "extension": [
                        {"url": "resource", "valueUri": "http://hl7.org/fhir/StructureDefinition/ImagingStudy"},
                        {"url": "supportedInteraction", "valueCode": "create"},
                        {"url": "supportedInteraction", "valueCode": "update"},
                        {"url": "fhirPathCriteria", "valueString": "%current.status = 'available'"},
                    ],
                },
                {
                    "url": f"{st_ext}.canFilterBy",
                    "extension": [
                        {"url": "resource", "valueUri": "ImagingStudy"},
                        {"url": "filterParameter", "valueString": "status"},
                    ],
                },
            ],
        }
    )
    return url


def _backport_bundle(sub_id: str, kind: str, events_since: int) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "resource": {
                    "resourceType": "Parameters",
                    "parameter": [
                        {"name": "subscription", "valueReference": {"reference": f"Subscription/{sub_id}"}},
                        {"name": "status", "valueCode": "active"},
                        {"name": "type", "valueCode": kind},
                        {"name": "events-since-subscription-start", "valueString": str(events_since)},
                    ],
                }
            }
        ],
    }
