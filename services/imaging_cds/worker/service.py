"""The worker service: take a job from the queue, run the pipeline against the real systems, record the outcome.

    ImagingStudy (EHR) -> series (PACS, QIDO-RS) -> select -> retrieve + decode + infer (WADO-RS, Triton)
    -> post-process -> FHIR transaction (EHR) -> job state

A job is acknowledged on the stream only once it is terminal, so a worker that dies mid-job leaves it for another.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from imaging_cds.config import Settings
from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.dicomweb.selection import select_series
from imaging_cds.errors import ImagingCdsError, InvalidNotificationError, NotAnalyzableError, TransientError
from imaging_cds.fhir.client import FhirClient, FhirError
from imaging_cds.fhir.imaging_study import ImagingStudyInfo, parse_imaging_study
from imaging_cds.fhir.report import build_report_bundle
from imaging_cds.inference.backend import InferenceBackend
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.jobs.model import Job, JobState
from imaging_cds.jobs.queue import Delivery, JobQueue
from imaging_cds.worker.pipeline import analyze_series
from imaging_cds.worker.timing import StageTimer

log = logging.getLogger("imaging_cds.worker")

MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class StudyOutcome:
    report_reference: str
    stage_seconds: dict[str, float]


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        fhir: FhirClient,
        pacs: PacsClient,
        backend: InferenceBackend,
        model: ModelManifest,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.fhir = fhir
        self.pacs = pacs
        self.backend = backend
        self.model = model
        self.consumer = f"worker-{uuid.uuid4().hex[:8]}"

    def run(self, stop: threading.Event) -> None:
        self.queue.ensure_group()
        log.info("worker %s consuming %s", self.consumer, self.queue.stream)
        while not stop.is_set():
            delivery = self.queue.next_delivery(self.consumer)
            if delivery is not None:
                self.handle(delivery)

    def handle(self, delivery: Delivery) -> Job | None:
        job = self.queue.get(delivery.job_id)
        if job is None or job.state.terminal:
            self.queue.ack(delivery)
            return job
        job = job.with_state(JobState.RUNNING, time.time(), attempts=job.attempts + 1, outcome="")
        self.queue.save(job)
        job = self._run(job)
        self.queue.save(job)
        if job.state.terminal:
            self.queue.ack(delivery)
        log.info("job %s study %s: %s %s", job.job_id, job.study.study_uid, job.state.value, job.outcome)
        return job

    def _run(self, job: Job) -> Job:
        try:
            outcome = self.process_study(job.study.imaging_study_id)
        except NotAnalyzableError as err:
            return job.with_state(JobState.NOT_ANALYZABLE, time.time(), outcome=str(err))
        except TransientError as err:
            if job.attempts >= MAX_ATTEMPTS:
                return job.with_state(
                    JobState.FAILED, time.time(), outcome=f"{err} (gave up after {job.attempts} attempts)"
                )
            # Left unacknowledged: the stream hands it out again after the visibility timeout.
            return job.with_state(JobState.QUEUED, time.time(), outcome=f"attempt {job.attempts} failed: {err}")
        except (ImagingCdsError, FhirError) as err:
            return job.with_state(JobState.FAILED, time.time(), outcome=str(err))
        except Exception as err:  # a bug: fail the job visibly, never drop it; the type names it, not the data
            log.exception("job %s: unexpected %s", job.job_id, type(err).__name__)
            return job.with_state(
                JobState.FAILED, time.time(), outcome=f"internal error ({type(err).__name__}); see worker log"
            )
        return job.with_state(
            JobState.SUCCEEDED,
            time.time(),
            outcome="report written",
            report_reference=outcome.report_reference,
            stage_seconds=outcome.stage_seconds,
        )

    def process_study(self, imaging_study_id: str) -> StudyOutcome:
        timer = StageTimer()
        with timer.stage("fhir-read"):
            study = self._load_study(imaging_study_id)
        uid = study.context.study_uid
        with timer.stage("search"):
            chosen = select_series(uid, self.pacs.search_series(uid), self.model.selection)
        analysis = analyze_series(
            uid,
            chosen.series_uid,
            self.pacs.iter_series(uid, chosen.series_uid),
            self.model,
            self.backend,
            timer,
            self.settings.inference_slab,
        )
        with timer.stage("fhir-write"):
            issued = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            bundle = build_report_bundle(
                study.context, analysis.algorithm, analysis.findings, self.settings.report_status, issued
            )
            response = self.fhir.transaction(bundle)
        return StudyOutcome(report_reference=_report_reference(uid, response), stage_seconds=timer.seconds())

    def _load_study(self, imaging_study_id: str) -> ImagingStudyInfo:
        resource = self.fhir.read(f"ImagingStudy/{imaging_study_id}")
        if resource is None:
            raise NotAnalyzableError("(unknown)", f"ImagingStudy/{imaging_study_id} not found on the FHIR server")
        try:
            study = parse_imaging_study(resource)
        except InvalidNotificationError as err:
            raise NotAnalyzableError("(unknown)", str(err)) from err
        self._check_endpoint(study)
        return study

    def _check_endpoint(self, study: ImagingStudyInfo) -> None:
        """Images are fetched only from the configured PACS: an Endpoint elsewhere is refused, not followed."""
        for ref in study.endpoint_refs:
            endpoint = self.fhir.read(ref)
            address = str((endpoint or {}).get("address", "")).rstrip("/")
            if address == self.pacs.url:
                return
        if study.endpoint_refs:
            raise NotAnalyzableError(
                study.context.study_uid,
                f"ImagingStudy/{study.context.imaging_study_id} names no DICOMweb endpoint at the configured "
                f"PACS ({self.pacs.url}); images are only retrieved from configured PACS",
            )


def _report_reference(study_uid: str, response: dict[str, Any]) -> str:
    """'DiagnosticReport/<id>' from a transaction-response; locations may be relative or absolute, with _history."""
    for entry in response.get("entry", []):
        parts = str((entry.get("response") or {}).get("location", "")).split("/")
        for i, part in enumerate(parts[:-1]):
            if part == "DiagnosticReport" and parts[i + 1]:
                return f"DiagnosticReport/{parts[i + 1]}"
    raise FhirError(f"study {study_uid}: transaction response names no DiagnosticReport")
