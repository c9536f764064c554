"""Running the gateway: gRPC API, HTTP webhook, subscription keeper and reconciler in one process."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from pathlib import Path

import uvicorn

from imaging_cds.config import Settings
from imaging_cds.fhir.client import FhirClient
from imaging_cds.fhir.subscription import SubscriptionKeeper, SubscriptionSpec
from imaging_cds.gateway.grpc_api import create_grpc_server
from imaging_cds.gateway.http_app import OrderLookup, create_app
from imaging_cds.intake.events import EventCounter
from imaging_cds.intake.reconciler import Reconciler
from imaging_cds.jobs.queue import BatchingSubmitter, queue_from_settings
from imaging_cds.metrics import register_queue
from imaging_cds.models import configured_models

log = logging.getLogger("imaging_cds.gateway")


def run_gateway(settings: Settings) -> None:
    queue = queue_from_settings(settings)
    queue.ensure_group()
    register_queue(queue)  # its backlog in GET /metrics
    stop = threading.Event()
    fhir = FhirClient.from_settings(settings)
    reconciler = Reconciler(fhir, queue, queue.redis, settings.queue_prefix, settings.poll_lookback_s)
    polling_only = settings.subscription_mode == "none"
    interval = settings.poll_only_interval_s if polling_only else settings.poll_interval_s
    _thread(reconciler.run, stop, interval)
    if not polling_only and settings.register_subscription:
        spec = SubscriptionSpec(
            endpoint=settings.public_webhook_url,
            secret=settings.webhook_secret,
            mode=settings.subscription_mode,
            topic=settings.subscription_topic,
            content=settings.backport_content,
        )
        keeper = SubscriptionKeeper(fhir, spec, on_replaced=reconciler.wake.set)
        _thread(_keep, keeper, stop, settings.subscription_check_s)
    tls = None
    if settings.grpc_tls_cert_file:
        tls = (Path(settings.grpc_tls_cert_file).read_bytes(), Path(settings.grpc_tls_key_file).read_bytes())
    grpc_server, grpc_port = create_grpc_server(
        queue, f"{settings.grpc_host}:{settings.grpc_port}", stop, configured_models(settings), tls
    )
    grpc_server.start()
    log.info(
        "gRPC API on %s:%d (%s); intake: %s, polling every %g s",
        settings.grpc_host,
        grpc_port,
        "TLS" if tls else "plaintext",
        settings.subscription_mode,
        interval,
    )
    app = create_app(
        queue,
        BatchingSubmitter(queue, settings.redis_url),
        settings.webhook_secret,
        settings.max_body_bytes,
        EventCounter(queue.redis, settings.queue_prefix),
        reconciler.wake.set,
        OrderLookup(settings.fhir_url, auth=fhir.auth),
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning", access_log=False)
    )
    # uvicorn re-raises SIGTERM after its own shutdown, which would skip the graceful gRPC stop below: the
    # signals only ask the HTTP server to finish, and this function stops the rest in order.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        stop.set()
        reconciler.wake.set()
        grpc_server.stop(grace=5).wait()
        fhir.close()
        log.info("gateway stopped")


def _keep(keeper: SubscriptionKeeper, stop: threading.Event, every_s: float) -> None:
    """Register the Subscription (retrying until the EHR answers), then keep checking it."""
    while not stop.is_set():
        try:
            sub_id = keeper.ensure()
            log.info("FHIR Subscription/%s delivers to %s", sub_id, keeper.spec.endpoint)
            break
        except Exception as err:  # the EHR may be down at start-up; the reconciler covers the gap
            log.warning("could not register the Subscription (%s); retrying in 10 s", type(err).__name__)
            stop.wait(10)
    keeper.run(stop, every_s)


def _thread(target: object, *args: object) -> None:
    threading.Thread(target=target, args=args, daemon=True).start()  # type: ignore[arg-type]
