"""Operational metrics in the Prometheus text format: what an operator watches, never who was imaged.

Every label value comes from a fixed vocabulary (intake outcomes, job states, stage names, model names from the
manifests, report kinds): no study, series, job or patient identifier ever becomes a label, so a scrape reveals
nothing about a patient (``tests/integration/test_metrics.py`` scrapes after real jobs and checks).

The gateway serves ``GET /metrics`` on its HTTP port, with the queue's backlog read from Redis at scrape time; a
worker serves its own on ``IMAGING_CDS_METRICS_PORT`` (off when 0), since it has no other port.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import redis
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "JOBS_FINISHED",
    "JOB_RUNS_DEFERRED",
    "MODELS_SERVED",
    "NOTIFICATIONS",
    "REPORTS",
    "STAGE_SECONDS",
    "QueueCollector",
    "intake_outcome",
    "serve_worker_metrics",
]

NOTIFICATIONS = Counter(
    "imaging_cds_notifications",
    "Notifications received by the gateway's webhook, by what became of them",
    ["outcome"],
)
JOBS_FINISHED = Counter("imaging_cds_jobs_finished", "Jobs that reached a terminal state, by state", ["state"])
JOB_RUNS_DEFERRED = Counter(
    "imaging_cds_job_runs_deferred",
    "Job runs that ended without a terminal state: retry (a system was unavailable) or waiting (images incomplete)",
    ["reason"],
)
STAGE_SECONDS = Histogram(
    "imaging_cds_stage_seconds",
    "Seconds a study spent in each pipeline stage (studies that produced results)",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
MODELS_SERVED = Gauge(
    "imaging_cds_worker_models_served",
    "1 while the inference server serves every model this worker runs, at its pinned version; 0 while the worker "
    "waits for it (at start-up, or after a job found it gone) and takes no job",
)
REPORTS = Counter(
    "imaging_cds_reports",
    "DiagnosticReports the worker charted, by model and kind: results, cancelled (not analysable), unchanged "
    "(a replay found this model version's report already there)",
    ["model", "kind"],
)

_STATUS_OUTCOMES = {
    200: "ignored",
    202: "queued",
    400: "invalid",
    401: "unauthorized",
    413: "too_large",
    503: "queue_unavailable",
}


def intake_outcome(status_code: int) -> str:
    """The ``outcome`` label of a webhook answer's HTTP status."""
    return _STATUS_OUTCOMES.get(status_code, "other")


class QueueLike(Protocol):
    def backlog(self) -> dict[str, int]: ...


class QueueCollector(Collector):
    """The job queue at scrape time: jobs by state, delayed jobs and dead letters (``JobQueue.backlog``).

    A Redis that does not answer gives no sample (the scrape still succeeds; ``imaging_cds_queue_up`` says 0)."""

    def __init__(self, queue: QueueLike) -> None:
        self.queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("imaging_cds_queue_up", "1 when the job queue (Redis) answered this scrape")
        try:
            backlog = self.queue.backlog()
        except (redis.RedisError, OSError):  # report the outage as a value, never fail the scrape
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        family = GaugeMetricFamily(
            "imaging_cds_queue_jobs",
            "Jobs in the queue by state, parked in the delayed set (delayed), and dead letters (dead_letters)",
            labels=["part"],
        )
        for part, n in sorted(backlog.items()):
            family.add_metric([part], float(n))
        yield family


def register_queue(queue: QueueLike) -> None:
    """Expose ``queue``'s backlog in this process's registry (the gateway's)."""
    REGISTRY.register(QueueCollector(queue))


def serve_worker_metrics(host: str, port: int) -> None:
    """Serve this process's metrics on ``host:port`` in a daemon thread; nothing when ``port`` is 0."""
    if port:
        start_http_server(port, addr=host)
