"""The gateway's HTTP side: FHIR Subscription notifications in, health for Kubernetes probes.

    PUT|POST /fhir/notify/ImagingStudy/{id}   R4 rest-hook, full resource or empty body
    POST     /fhir/notify                      R4 rest-hook post-endpoint (an ImagingStudy, or empty: go query),
                                               or an R4 Subscriptions Backport notification (history Bundle)
    GET      /healthz                          process alive
    GET      /readyz                           Redis reachable
    GET      /metrics                          Prometheus metrics (imaging_cds.metrics: no patient data)

Answers: 202 queued (or already queued), 200 nothing to do (handshake, heartbeat, a status we do not analyse),
400 malformed, 401 missing or wrong secret, 413 body too large, 503 queue unavailable (the EHR retries).
Errors are OperationOutcomes that say what was wrong with the request, never what it contained.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

import httpx
import redis
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imaging_cds.errors import InvalidNotificationError
from imaging_cds.intake.backport import BackportNotification, parse_backport
from imaging_cds.intake.events import EventCounter
from imaging_cds.intake.priority import priority_from_orders
from imaging_cds.intake.rest_hook import parse_notification
from imaging_cds.jobs.model import Priority, StudyRef
from imaging_cds.jobs.queue import BatchingSubmitter, JobQueue
from imaging_cds.metrics import NOTIFICATIONS, intake_outcome

log = logging.getLogger("imaging_cds.gateway")


def create_app(
    queue: JobQueue,
    submitter: BatchingSubmitter,
    webhook_secret: str = "",
    max_body_bytes: int = 1_000_000,
    events: EventCounter | None = None,
    wake_reconciler: Callable[[], None] = lambda: None,
    orders: OrderLookup | None = None,
) -> Starlette:
    expected = f"Bearer {webhook_secret}".encode() if webhook_secret else b""

    async def notify(request: Request) -> JSONResponse:
        answer = await _notify(request)
        NOTIFICATIONS.labels(outcome=intake_outcome(answer.status_code)).inc()
        return answer

    async def _notify(request: Request) -> JSONResponse:
        if expected and not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return _outcome(401, "security", "missing or wrong webhook credentials")
        body = await _read_body(request, max_body_bytes)
        if body is None:
            return _outcome(413, "too-costly", f"body over {max_body_bytes} bytes")
        path_id = request.path_params.get("id")
        try:
            if path_id is None and not body.strip():
                wake_reconciler()  # a payload-less rest-hook: something changed, go and look
                return JSONResponse({"action": "poll"}, status_code=202)
            if path_id is None and body.lstrip().startswith(b"{") and b'"history"' in body:
                return await _backport(parse_backport(body))
            study = parse_notification(path_id, body, request.headers.get("content-type", ""))
        except InvalidNotificationError as err:
            log.info("rejected notification: %s", err)
            return _outcome(400, "invalid", str(err))
        if study is None:
            return _outcome(200, "informational", "ImagingStudy status is not analysable; ignored", "information")
        return await _queue([study])

    async def _backport(note: BackportNotification) -> JSONResponse:
        first = min(note.event_numbers) if note.event_numbers else None
        if (
            events is not None
            and note.subscription_id
            and events.gap(note.subscription_id, first, note.events_since_start)
        ):
            log.warning("Subscription/%s: notifications were missed; polling now", note.subscription_id)
            wake_reconciler()
        if note.unresolved_events:
            wake_reconciler()  # empty payload: the events name no resource, so query for them
        if note.type != "event-notification" or not note.studies:
            return JSONResponse({"type": note.type, "queued": []}, status_code=200)
        return await _queue(list(note.studies))

    async def _queue(studies: list[StudyRef]) -> JSONResponse:
        try:
            results = [await submitter.submit(s, await priority_of(s)) for s in studies]
        except redis.RedisError:
            log.warning("queue unavailable; notification refused with 503")
            return _outcome(503, "transient", "job queue unavailable; retry later")
        for study, r in zip(studies, results, strict=True):
            if r.created:  # duplicates are the common case under retrying EHRs: not logged one by one
                log.info("ImagingStudy/%s: job %s queued", study.imaging_study_id, r.job_id)
        body: dict[str, Any] = {"jobs": [{"job_id": r.job_id, "duplicate": not r.created} for r in results]}
        if len(results) == 1:
            body.update(body["jobs"][0])
        return JSONResponse(body, status_code=202)

    async def priority_of(study: StudyRef) -> Priority:
        if not study.orders or orders is None:
            return Priority.ROUTINE
        return priority_from_orders(await orders.fetch(study.orders))

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

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
            Route("/metrics", metrics),
        ]
    )


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is over `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class OrderLookup:
    """Reads the orders (ServiceRequests) a notified study is based on, to queue STAT studies first.

    A lookup that fails or times out leaves the study routine (logged): priority must not cost a notification.
    """

    def __init__(self, fhir_url: str, timeout_s: float = 2.0, auth: httpx.Auth | None = None) -> None:
        self._http = httpx.AsyncClient(
            base_url=fhir_url.rstrip("/") + "/",
            timeout=timeout_s,
            headers={"Accept": "application/fhir+json"},
            auth=auth,
        )

    async def fetch(self, references: tuple[str, ...]) -> list[dict[str, Any]]:
        found = []
        for ref in references:
            try:
                response = await self._http.get(ref)
                if response.status_code == 200:
                    found.append(response.json())
            except (httpx.HTTPError, ValueError) as err:
                log.warning(
                    "could not read %s for the study's priority (%s); queued as routine", ref, type(err).__name__
                )
        return found


def _outcome(status: int, code: str, text: str, severity: str = "error") -> JSONResponse:
    body: dict[str, Any] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }
    return JSONResponse(body, status_code=status, media_type="application/fhir+json")
