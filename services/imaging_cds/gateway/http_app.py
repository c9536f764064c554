"""The gateway's HTTP side: FHIR rest-hook notifications in, health for Kubernetes probes.

    PUT|POST /fhir/notify/ImagingStudy/{id}   R4 rest-hook (full resource or empty body)
    POST     /fhir/notify                      R4 rest-hook ping (empty) or a full ImagingStudy
    GET      /healthz                          process alive
    GET      /readyz                           Redis reachable

Answers: 202 queued (or already queued), 200 ignored (a status we do not analyse), 400 malformed, 401 missing or
wrong secret, 413 body too large, 503 queue unavailable (the EHR retries). Errors are OperationOutcomes.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from imaging_cds.errors import InvalidNotificationError
from imaging_cds.intake.rest_hook import parse_notification
from imaging_cds.jobs.queue import JobQueue

log = logging.getLogger("imaging_cds.gateway")


def create_app(queue: JobQueue, webhook_secret: str = "", max_body_bytes: int = 1_000_000) -> Starlette:
    expected = f"Bearer {webhook_secret}".encode() if webhook_secret else b""

    async def notify(request: Request) -> JSONResponse:
        if expected and not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return _outcome(401, "security", "missing or wrong webhook credentials")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            return _outcome(413, "too-costly", f"body over {max_body_bytes} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                return _outcome(413, "too-costly", f"body over {max_body_bytes} bytes")
        try:
            study = parse_notification(request.path_params.get("id"), body, request.headers.get("content-type", ""))
        except InvalidNotificationError as err:
            log.info("rejected notification: %s", err)
            return _outcome(400, "invalid", str(err))
        if study is None:
            return _outcome(200, "informational", "ImagingStudy status is not analysable; ignored", "information")
        try:
            enqueued = queue.submit(study)
        except redis.RedisError:
            log.warning("queue unavailable; notification for ImagingStudy/%s refused", study.imaging_study_id)
            return _outcome(503, "transient", "job queue unavailable; retry later")
        log.info(
            "ImagingStudy/%s: job %s %s",
            study.imaging_study_id,
            enqueued.job_id,
            "queued" if enqueued.created else "already queued",
        )
        return JSONResponse(
            {"job_id": enqueued.job_id, "duplicate": not enqueued.created},
            status_code=202,
            headers={"Location": f"/jobs/{enqueued.job_id}"},
        )

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        try:
            queue.ping()
        except redis.RedisError:
            return JSONResponse({"status": "redis unreachable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route("/fhir/notify/ImagingStudy/{id}", notify, methods=["PUT", "POST"]),
            Route("/fhir/notify", notify, methods=["POST"]),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
        ]
    )


def _outcome(status: int, code: str, text: str, severity: str = "error") -> JSONResponse:
    body: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }
    return JSONResponse(body, status_code=status, media_type="application/fhir+json")
