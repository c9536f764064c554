"""The polling reconciler: finds available ImagingStudies by ``_lastUpdated`` and queues those not yet queued.

It is the safety net under subscriptions (a notification that never came, a subscription that went to error) and
the only intake for an EHR without subscriptions. The high-water mark (the newest ``meta.lastUpdated`` seen) lives
in Redis, so a restarted or second gateway carries on where the last one stopped; a short Redis lock keeps two
gateway replicas from polling at once. Queuing is deduplicated by study, so seeing a study twice costs nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass

import redis

from imaging_cds.errors import ImagingCdsError, InvalidNotificationError
from imaging_cds.fhir.client import FhirClient, FhirError
from imaging_cds.fhir.imaging_study import parse_imaging_study
from imaging_cds.intake.priority import priority_from_orders
from imaging_cds.intake.rest_hook import service_requests
from imaging_cds.jobs.model import StudyRef
from imaging_cds.jobs.queue import JobQueue

log = logging.getLogger("imaging_cds.reconciler")


@dataclass(frozen=True)
class PollResult:
    seen: int
    queued: int
    invalid: int
    high_water_mark: str


class Reconciler:
    def __init__(self, fhir: FhirClient, queue: JobQueue, client: redis.Redis, prefix: str, lookback_s: float) -> None:
        self.fhir = fhir
        self.queue = queue
        self._redis = client
        self._hwm_key = f"{prefix}:poll:high-water-mark"
        self._lock_key = f"{prefix}:poll:lock"
        self._lookback_s = lookback_s
        self.wake = threading.Event()

    def poll_once(self) -> PollResult:
        hwm = str(self._redis.get(self._hwm_key) or "") or _iso(time.time() - self._lookback_s)
        params = {"status": "available", "_lastUpdated": f"ge{hwm}", "_sort": "_lastUpdated", "_count": "100"}
        seen = queued = invalid = 0
        newest = hwm
        for resource in self.fhir.search_all("ImagingStudy", params):
            seen += 1
            updated = str((resource.get("meta") or {}).get("lastUpdated", ""))
            newest = max(newest, updated)
            try:
                study = parse_imaging_study(resource)
            except InvalidNotificationError as err:
                invalid += 1
                log.warning("reconciler: skipped %s", err)
                continue
            ref = StudyRef(
                study.context.imaging_study_id, study.context.study_uid, service_requests(study.context.based_on)
            )
            orders = [o for o in (self.fhir.read(r) for r in ref.orders) if o is not None]
            if self.queue.submit(ref, priority_from_orders(orders)).created:
                queued += 1
                log.info(
                    "reconciler: queued ImagingStudy/%s (no notification had arrived)", study.context.imaging_study_id
                )
        if newest != hwm:
            self._redis.set(self._hwm_key, newest)
        return PollResult(seen=seen, queued=queued, invalid=invalid, high_water_mark=newest)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Poll every interval_s, or at once when woken (a gap in notifications, a re-created subscription)."""
        while not stop.is_set():
            woken = self.wake.wait(timeout=interval_s)
            self.wake.clear()
            if stop.is_set():
                return
            try:
                if woken or self._redis.set(self._lock_key, "1", nx=True, px=int(interval_s * 900)):
                    result = self.poll_once()
                    log.info("reconciler: %d seen, %d queued, %d invalid", result.seen, result.queued, result.invalid)
            except (ImagingCdsError, FhirError, redis.RedisError) as err:
                log.warning("reconciler: poll failed (%s); next try in %g s", err, interval_s)


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
