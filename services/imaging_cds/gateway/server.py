"""Running the gateway: gRPC API and HTTP webhook in one process, stopped cleanly on SIGTERM."""

from __future__ import annotations

import logging
import threading

import uvicorn

from imaging_cds.config import Settings
from imaging_cds.fhir.client import FhirClient
from imaging_cds.fhir.subscription import ensure_subscription
from imaging_cds.gateway.grpc_api import create_grpc_server
from imaging_cds.gateway.http_app import create_app
from imaging_cds.jobs.queue import JobQueue

log = logging.getLogger("imaging_cds.gateway")


def run_gateway(settings: Settings) -> None:
    queue = JobQueue.from_url(settings.redis_url, group=settings.consumer_group)
    queue.ensure_group()
    stop = threading.Event()
    grpc_server, grpc_port = create_grpc_server(queue, f"{settings.grpc_host}:{settings.grpc_port}", stop)
    grpc_server.start()
    log.info("gRPC API on %s:%d", settings.grpc_host, grpc_port)
    if settings.register_subscription:
        with FhirClient(settings.fhir_url, settings.http_timeout_s) as fhir:
            sub_id = ensure_subscription(fhir, settings.public_webhook_url, settings.webhook_secret)
        log.info("FHIR Subscription/%s delivers to %s", sub_id, settings.public_webhook_url)
    app = create_app(queue, settings.webhook_secret, settings.max_body_bytes)
    try:
        uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning", access_log=False)
    finally:
        stop.set()
        grpc_server.stop(grace=5).wait()
        log.info("gateway stopped")
