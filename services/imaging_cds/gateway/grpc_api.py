"""The gateway's gRPC side: imaging_cds.v1.JobService, plus grpc.health.v1 and server reflection."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from imaging_cds.fhir.imaging_study import is_dicom_uid as _is_uid
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.intake.rest_hook import is_fhir_id
from imaging_cds.jobs.model import Job, JobState, Priority, StudyRef
from imaging_cds.jobs.queue import JobQueue
from imaging_cds.v1 import jobs_pb2, jobs_pb2_grpc

log = logging.getLogger("imaging_cds.gateway")

_STATES = {
    JobState.QUEUED: jobs_pb2.JOB_STATE_QUEUED,
    JobState.RUNNING: jobs_pb2.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: jobs_pb2.JOB_STATE_SUCCEEDED,
    JobState.NOT_ANALYZABLE: jobs_pb2.JOB_STATE_NOT_ANALYZABLE,
    JobState.FAILED: jobs_pb2.JOB_STATE_FAILED,
    JobState.CANCELLED: jobs_pb2.JOB_STATE_CANCELLED,
}
_FROM_PROTO = {v: k for k, v in _STATES.items()}
MAX_PAGE = 500
SERVICE_NAME = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


def job_message(job: Job) -> jobs_pb2.Job:
    return jobs_pb2.Job(
        job_id=job.job_id,
        study=jobs_pb2.StudyReference(
            imaging_study_id=job.study.imaging_study_id, study_instance_uid=job.study.study_uid
        ),
        state=_STATES[job.state],
        outcome=job.outcome,
        report_reference=job.report_reference,
        report_references=list(job.report_references),
        attempts=job.attempts,
        created=_timestamp(job.created),
        updated=_timestamp(job.updated),
        stage_seconds=job.stage_seconds,
    )


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, queue: JobQueue, models: list[ModelManifest]) -> None:
        self.queue = queue
        self.models = models

    def Submit(self, request: jobs_pb2.SubmitRequest, context: grpc.ServicerContext) -> jobs_pb2.SubmitResponse:
        study_id = request.study.imaging_study_id
        if not is_fhir_id(study_id):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "study.imaging_study_id must be a FHIR id")
        priority_text = request.priority.lower() or "routine"
        if priority_text not in ("routine", "stat"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "priority must be 'routine' or 'stat'")
        ref = StudyRef(imaging_study_id=study_id, study_uid=request.study.study_instance_uid)
        uid = request.study.study_instance_uid
        if uid and not _is_uid(uid):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "study.study_instance_uid is not a DICOM UID")
        try:
            enqueued = self.queue.submit(ref, Priority(priority_text))
        except redis.RedisError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "job queue unavailable; retry later")
        if not enqueued.created:
            context.set_trailing_metadata((("job-id", enqueued.job_id),))
            context.abort(grpc.StatusCode.ALREADY_EXISTS, f"ImagingStudy/{study_id} already has job {enqueued.job_id}")
        return jobs_pb2.SubmitResponse(job_id=enqueued.job_id)

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        return job_message(self._job(request.job_id, context))

    def WatchJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> Iterator[jobs_pb2.Job]:
        self._job(request.job_id, context)
        for job in self.queue.watch(request.job_id):
            if not context.is_active():
                return
            yield job_message(job)

    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        if request.state not in (jobs_pb2.JOB_STATE_UNSPECIFIED, *_FROM_PROTO) or request.page_size < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown state or negative page_size")
        if request.page_token and not request.page_token.isdigit():
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_token is not one this server gave")
        size = min(request.page_size or 50, MAX_PAGE)
        offset = int(request.page_token or 0)
        try:
            jobs = self.queue.list_jobs(_FROM_PROTO.get(request.state), limit=size + 1, offset=offset)
        except redis.RedisError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "job store unavailable; retry later")
        more = len(jobs) > size
        return jobs_pb2.ListJobsResponse(
            jobs=[job_message(j) for j in jobs[:size]], next_page_token=str(offset + size) if more else ""
        )

    def CancelJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.Job:
        before = self._job(request.job_id, context)
        if before.state.terminal:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"job {before.job_id} already {before.state.value}")
        job = self.queue.cancel(request.job_id)
        return job_message(job or before)

    def ListModels(
        self, request: jobs_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> jobs_pb2.ListModelsResponse:
        return jobs_pb2.ListModelsResponse(
            models=[
                jobs_pb2.Model(
                    name=m.name,
                    title=m.title,
                    version=m.version,
                    task=m.task,
                    triton_model=m.triton_model,
                    triton_version=m.triton_version,
                )
                for m in self.models
            ]
        )

    def _job(self, job_id: str, context: grpc.ServicerContext) -> Job:
        if not job_id or len(job_id) > 64:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id is required")
        try:
            job = self.queue.get(job_id)
        except redis.RedisError:
            context.abort(grpc.StatusCode.UNAVAILABLE, "job store unavailable; retry later")
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no job {job_id}")
            raise AssertionError("unreachable: abort raises")
        return job


def create_grpc_server(
    queue: JobQueue,
    address: str,
    stop: threading.Event,
    models: list[ModelManifest],
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[grpc.Server, int]:
    """The gRPC server, not yet started; `tls` is (certificate chain PEM, private key PEM) for a TLS port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(queue, models), server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    threading.Thread(target=_track_health, args=(queue, health_servicer, stop), daemon=True).start()
    return server, port


def _track_health(queue: JobQueue, servicer: health.HealthServicer, stop: threading.Event) -> None:
    """SERVING while Redis answers; NOT_SERVING otherwise (a job could not be queued)."""
    while True:
        try:
            queue.ping()
            status = health_pb2.HealthCheckResponse.SERVING
        except redis.RedisError:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            servicer.set(name, status)
        if stop.wait(2.0):
            return


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts
