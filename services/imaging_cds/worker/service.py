"""The worker service: take a job from the queue, run the pipeline against the real systems, record the outcome.

    ImagingStudy (EHR) -> series (PACS, QIDO-RS) -> images complete? -> select -> retrieve + decode + infer
    (WADO-RS, Triton) -> post-process -> still ours and not cancelled? -> FHIR transaction (EHR) -> job state

Every job ends in exactly one of: a terminal state with its stream entry acknowledged (succeeded, not analysable,
cancelled, or failed and dead-lettered), or parked in the delayed set (waiting for images, or backing off after a
transient failure). A worker that dies mid-job stops renewing its claim, and another takes the job over.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from imaging_cds.config import Settings
from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.dicomweb.selection import plan_series
from imaging_cds.errors import ImagingCdsError, InvalidNotificationError, NotAnalyzableError, TransientError
from imaging_cds.fhir.charting import Charted, chart_not_analysable, chart_report
from imaging_cds.fhir.client import FhirClient, FhirError
from imaging_cds.fhir.imaging_study import ImagingStudyInfo, parse_imaging_study
from imaging_cds.fhir.report import Algorithm
from imaging_cds.inference.backend import ROUTINE_PRIORITY, STAT_PRIORITY, InferenceBackend, with_priority
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.jobs.model import Job, JobState, Priority
from imaging_cds.jobs.policy import Readiness, backoff_s, study_readiness
from imaging_cds.jobs.queue import Delivery, JobQueue
from imaging_cds.metrics import JOB_RUNS_DEFERRED, JOBS_FINISHED, MODELS_SERVED, REPORTS, STAGE_SECONDS
from imaging_cds.worker.pipeline import ModelRun, SeriesAnalysis, analyze_series_with
from imaging_cds.worker.timing import StageTimer

log = logging.getLogger("imaging_cds.worker")

ANALYSABLE_STATUS = "available"
WAITING = "waiting for images: "


@dataclass(frozen=True)
class StudyOutcome:
    """What one study's analysis wrote: the reports (one per model that analysed it) and, per model, in words."""

    report_references: tuple[str, ...]
    summary: str
    stage_seconds: dict[str, float]

    @property
    def report_reference(self) -> str:
        return self.report_references[0] if self.report_references else ""


class StudyNotReady(Exception):
    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness
        super().__init__(readiness.reason)


class JobAbandoned(Exception):
    """The job was cancelled, or another worker took it over: this worker must write nothing."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        queue: JobQueue,
        fhir: FhirClient,
        pacs: PacsClient,
        backend: InferenceBackend,
        models: ModelManifest | Sequence[ModelManifest],
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.fhir = fhir
        self.pacs = pacs
        self.backend = backend
        self.models = [models] if isinstance(models, ModelManifest) else list(models)
        if not self.models:
            raise ValueError("a worker needs at least one model")
        self.consumer = f"worker-{uuid.uuid4().hex[:8]}"
        self._transient_runs = 0  # job runs that ended in a TransientError (a system was unavailable)

    # -- the loop -----------------------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        if not self.wait_for_models(stop):
            return
        log.info("worker %s consuming %s", self.consumer, ", ".join(self.queue.streams.values()))
        while not stop.is_set():
            try:
                self.queue.ensure_group()
                delivery = self.queue.next_delivery(self.consumer)
                if delivery is not None:
                    failures = self._transient_runs
                    self.handle(delivery)
                    # A job that found something unavailable: if it is the inference server, take no other job
                    # (each would spend a retry) until it serves the models again.
                    if self._transient_runs > failures and (reason := self._not_served()) is not None:
                        log.warning("the inference server no longer serves the models: %s", reason)
                        if not self.wait_for_models(stop):
                            return
            except redis.RedisError as err:
                # Redis restarting or unreachable: nothing is lost (unacknowledged entries stay pending); wait.
                log.warning("queue unavailable (%s); retrying in 1 s", type(err).__name__)
                stop.wait(1.0)

    def wait_for_models(self, stop: threading.Event, every_s: float = 2.0, remind_s: float = 60.0) -> bool:
        """Blocks until the inference server serves every model at its pinned version; False if ``stop`` came first.

        A worker takes no job while Triton does not serve its models: at start-up (a sidecar, a rollout, a node
        restart still loading them) and after a job found Triton gone (a restart, maintenance). A job taken then
        would spend its transient-failure retries (``max_attempts``, about a minute of backoff) on the outage and
        be dead-lettered. The reason is logged when it changes and every ``remind_s`` while it lasts;
        ``imaging_cds_worker_models_served`` is 0 meanwhile.
        """
        MODELS_SERVED.set(0)
        started = time.monotonic()
        said, said_at = "", 0.0
        while not stop.is_set():
            reason = self._not_served()
            if reason is None:
                MODELS_SERVED.set(1)
                versions = ", ".join(f"{m.name} v{m.triton_version}" for m in self.models)
                log.info("inference server ready after %.1f s: %s", time.monotonic() - started, versions)
                return True
            now = time.monotonic()
            if reason != said or now - said_at >= remind_s:
                log.warning(
                    "taking no job until the inference server serves the models (%.0f s so far): %s",
                    now - started,
                    reason,
                )
                said, said_at = reason, now
            stop.wait(every_s)
        return False

    def _not_served(self) -> str | None:
        """Why the inference server does not serve every model at its pinned version now; None when it does
        (one readiness poll per model)."""
        try:
            for model in self.models:
                self.backend.served_version(model, retry=False)
        except TransientError as err:
            return str(err).removesuffix("; the job will be retried")
        return None

    def handle(self, delivery: Delivery) -> Job | None:
        job = self.queue.get(delivery.job_id)
        if job is None or job.state.terminal:
            self.queue.ack(delivery)
            return job
        if job.deliveries >= self.settings.max_deliveries:
            return self._finish(
                delivery,
                job.with_state(
                    JobState.FAILED,
                    time.time(),
                    outcome=f"study {job.study.study_uid or job.study.imaging_study_id}: taken {job.deliveries} times "
                    "without finishing (workers crashed or were stopped on it); dead-lettered for a person to look at",
                ),
            )
        job = job.with_state(JobState.RUNNING, time.time(), deliveries=job.deliveries + 1, outcome="")
        self.queue.save(job)
        with _ClaimRenewal(self.queue, delivery, self.consumer, self.settings.visibility_timeout_s / 4) as claim:
            try:
                result = self._run(job, lambda: self._still_ours(job, delivery, claim))
            except JobAbandoned as why:
                log.info("job %s: %s; nothing written", job.job_id, why)
                current = self.queue.get(job.job_id)
                if current is not None and current.state is JobState.CANCELLED:
                    self.queue.ack(delivery)
                return current
        if result.state.terminal:
            return self._finish(delivery, result)
        self.queue.retry_later(delivery, result)
        JOB_RUNS_DEFERRED.labels(reason="waiting" if result.outcome.startswith(WAITING) else "retry").inc()
        log.info("job %s: %s", job.job_id, result.outcome)
        return result

    def _finish(self, delivery: Delivery, job: Job) -> Job:
        self.queue.finish(delivery, job)
        JOBS_FINISHED.labels(state=job.state.value).inc()
        for stage, seconds in job.stage_seconds.items():
            STAGE_SECONDS.labels(stage=stage).observe(seconds)
        log.info("job %s study %s: %s %s", job.job_id, job.study.study_uid, job.state.value, job.outcome)
        return job

    def _still_ours(self, job: Job, delivery: Delivery, claim: _ClaimRenewal) -> None:
        current = self.queue.get(job.job_id)
        if current is not None and current.state is JobState.CANCELLED:
            raise JobAbandoned("cancelled by an operator")
        if claim.lost or not self.queue.owns(delivery, self.consumer):
            raise JobAbandoned("taken over by another worker")

    def _run(self, job: Job, before_write: Callable[[], None]) -> Job:
        now = time.time()
        try:
            outcome = self.process_study(job.study.imaging_study_id, job, before_write)
        except StudyNotReady as wait:
            r = wait.readiness
            return job.with_state(
                JobState.QUEUED,
                now,
                not_before=now + r.wait_s,
                observed_instances=r.observed,
                stable_since=r.stable_since,
                outcome=f"{WAITING}{r.reason}",
            )
        except NotAnalyzableError as err:
            return job.with_state(JobState.NOT_ANALYZABLE, now, outcome=str(err))
        except TransientError as err:
            self._transient_runs += 1
            attempts = job.attempts + 1
            if attempts >= self.settings.max_attempts:
                return job.with_state(
                    JobState.FAILED,
                    now,
                    attempts=attempts,
                    outcome=f"{err} (gave up after {attempts} attempts; dead-lettered, replay when fixed)",
                )
            delay = backoff_s(attempts, self.settings.retry_base_s, self.settings.retry_cap_s)
            return job.with_state(
                JobState.QUEUED,
                now,
                attempts=attempts,
                not_before=now + delay,
                outcome=f"attempt {attempts} of {self.settings.max_attempts} failed, retrying in {delay:.0f} s: {err}",
            )
        except (ImagingCdsError, FhirError) as err:
            return job.with_state(JobState.FAILED, now, outcome=f"{err}; dead-lettered")
        except JobAbandoned:
            raise
        except Exception as err:  # a bug: fail the job visibly, never drop it; the type names it, not the data
            log.exception("job %s: unexpected %s", job.job_id, type(err).__name__)
            return job.with_state(
                JobState.FAILED, now, outcome=f"internal error ({type(err).__name__}); see worker log; dead-lettered"
            )
        return job.with_state(
            JobState.SUCCEEDED,
            time.time(),
            outcome=outcome.summary,
            report_reference=outcome.report_reference,
            report_references=outcome.report_references,
            stage_seconds=outcome.stage_seconds,
        )

    # -- one study ----------------------------------------------------------------------------------------------

    def process_study(
        self,
        imaging_study_id: str,
        job: Job | None = None,
        before_write: Callable[[], None] | None = None,
    ) -> StudyOutcome:
        """Analyse one study and write its report. With a job, first wait until its images are complete."""
        timer = StageTimer()
        with timer.stage("fhir-read"):
            study = self._load_study(imaging_study_id)
        return self._analyse_and_chart(study, timer, job, before_write)

    def _analyse_and_chart(
        self,
        study: ImagingStudyInfo,
        timer: StageTimer,
        job: Job | None,
        before_write: Callable[[], None] | None,
    ) -> StudyOutcome:
        """Every model on the series it accepts (a series read by several models is retrieved once), then one
        report per model: its results, or a cancelled report saying why it could not analyse the study.

        A model that accepts none of the study's series writes nothing while another model analyses the study (a
        chest model has nothing to say about a head CT read by a head model); when no model accepts any series,
        each writes its cancelled report, so the clinician sees that the AI did not run and why."""
        uid = study.context.study_uid
        with timer.stage("search"):
            series = self.pacs.search_series(uid)
        if job is not None:
            try:
                self._check_complete(job, study, sum(s.n_instances for s in series))
            except NotAnalyzableError as err:
                runs = [ModelRun(m, not_analysable=err) for m in self.models]
                raise self._not_analysable(study, runs, before_write) from err
        plan = plan_series(uid, series, self.models)
        if not plan.reads:
            runs = [ModelRun(model, not_analysable=err) for model, err in plan.rejected]
            raise self._not_analysable(study, runs, before_write)
        runs = []
        backend = with_priority(self.backend, _inference_priority(job))
        for chosen, models in plan.reads:
            instances = self.pacs.iter_series(uid, chosen.series_uid)
            runs += analyze_series_with(
                uid, chosen.series_uid, instances, models, backend, timer, self.settings.inference_slab
            )
        if all(run.analysis is None for run in runs):
            raise self._not_analysable(study, runs, before_write)
        references: list[str] = []
        said: list[str] = []
        with timer.stage("fhir-write"):
            for run in runs:
                if run.analysis is not None:
                    charted = self._chart(study, run.analysis, before_write)
                    references.append(charted.reference)
                    done = "written" if charted.written else "already in the chart for this model version"
                    said.append(f"{run.model.name}: report {charted.reference} {done}")
                else:
                    assert run.not_analysable is not None
                    then = self._chart_not_analysable(study, run.model, run.not_analysable, before_write)
                    said.append(f"{run.model.name}: not analysable: {run.not_analysable.reason}; {then}")
        said += [f"{model.name}: reads none of the study's series ({err.reason})" for model, err in plan.rejected]
        return StudyOutcome(tuple(references), "; ".join(said), timer.seconds())

    def _not_analysable(
        self, study: ImagingStudyInfo, runs: list[ModelRun], before_write: Callable[[], None] | None
    ) -> NotAnalyzableError:
        """Every model's cancelled report, and the error that ends the job (its outcome says what was written)."""
        reasons, thens = [], []
        for run in runs:
            assert run.not_analysable is not None
            thens.append(self._chart_not_analysable(study, run.model, run.not_analysable, before_write))
            reasons.append(
                run.not_analysable.reason if len(runs) == 1 else f"{run.model.name}: {run.not_analysable.reason}"
            )
        return NotAnalyzableError(study.context.study_uid, " | ".join(reasons), "; ".join(thens))

    def _chart(
        self, study: ImagingStudyInfo, analysis: SeriesAnalysis, before_write: Callable[[], None] | None
    ) -> Charted:
        issued = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        charted = chart_report(
            self.fhir,
            study.context,
            analysis.algorithm,
            analysis.findings,
            self.settings.report_status,
            issued,
            before_write,
        )
        self._check_report_subject(study, charted.reference)
        REPORTS.labels(model=analysis.algorithm.name, kind="results" if charted.written else "unchanged").inc()
        return charted

    def _chart_not_analysable(
        self,
        study: ImagingStudyInfo,
        model: ModelManifest,
        err: NotAnalyzableError,
        before_write: Callable[[], None] | None,
    ) -> str:
        """A cancelled report that says why, so the clinician knows the AI did not run; what was done, in words."""
        algorithm = Algorithm(model.name, model.title, model.version, served_version=model.triton_version)
        issued = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        charted = chart_not_analysable(self.fhir, study.context, algorithm, err.reason, issued, before_write)
        REPORTS.labels(model=model.name, kind="cancelled" if charted.written else "unchanged").inc()
        return (
            f"cancelled report {charted.reference} written (the AI did not run)"
            if charted.written
            else f"{charted.reference} already in the chart, left as it is"
        )

    def _check_report_subject(self, study: ImagingStudyInfo, reference: str) -> None:
        """A conditional create that matched an existing report must have matched this patient's.

        The result identifiers are derived from the DICOM study; when the same study is registered again under
        another patient (a merge, a mis-filed study), the EHR already holds its report elsewhere. That is not
        copied into a second chart silently: the job fails for a person to look at.
        """
        report = self.fhir.read(reference) or {}
        subject = str((report.get("subject") or {}).get("reference", ""))
        if "/".join(subject.split("/")[-2:]) != study.context.subject:
            raise FhirError(
                f"study {study.context.study_uid}: its results already exist as {reference} for another patient "
                f"than ImagingStudy/{study.context.imaging_study_id}'s; nothing new written; check for a patient "
                "merge or a mis-filed study, then replay"
            )

    def _check_complete(self, job: Job, study: ImagingStudyInfo, observed: int) -> None:
        now = time.time()
        readiness = study_readiness(
            study.number_of_instances,
            observed,
            job.observed_instances,
            job.stable_since or now,
            now,
            self.settings.stability_window_s,
        )
        if readiness.ready:
            return
        if now - job.created > self.settings.max_wait_for_images_s:
            raise NotAnalyzableError(
                study.context.study_uid,
                f"images still incomplete after {self.settings.max_wait_for_images_s / 3600:g} h: {readiness.reason}",
            )
        raise StudyNotReady(readiness)

    def _load_study(self, imaging_study_id: str) -> ImagingStudyInfo:
        resource = self.fhir.read(f"ImagingStudy/{imaging_study_id}")
        where = f"ImagingStudy/{imaging_study_id}"
        if resource is None:
            raise NotAnalyzableError("(unknown)", f"{where} not found on the FHIR server")
        try:
            study = parse_imaging_study(resource)
        except InvalidNotificationError as err:
            raise NotAnalyzableError("(unknown)", str(err)) from err
        if study.status != ANALYSABLE_STATUS:
            raise NotAnalyzableError(
                study.context.study_uid, f"{where} has status {study.status or 'missing'}, expected available"
            )
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


def _inference_priority(job: Job | None) -> int:
    """Triton's request priority for the job: STAT studies go ahead of routine ones in the model's queue."""
    return STAT_PRIORITY if job is not None and job.priority is Priority.STAT else ROUTINE_PRIORITY


class _ClaimRenewal:
    """Renews the worker's claim on its stream entry in the background while the job runs."""

    def __init__(self, queue: JobQueue, delivery: Delivery, consumer: str, every_s: float) -> None:
        self._queue, self._delivery, self._consumer, self._every_s = queue, delivery, consumer, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="claim-renewal")
        self.lost = False

    def __enter__(self) -> _ClaimRenewal:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self._every_s * random.uniform(0.8, 1.0)):
            try:
                if not self._queue.heartbeat(self._delivery, self._consumer):
                    self.lost = True
                    return
            except redis.RedisError:
                continue  # Redis restarting: the claim's idle time keeps running; try again
