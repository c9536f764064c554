"""Our Subscription on the EHR: created at gateway start-up, checked periodically, re-created when it has gone.

Two kinds: an R4 rest-hook Subscription on ``ImagingStudy?status=available`` (criteria), or an R4 Subscriptions
Backport Subscription to a SubscriptionTopic the EHR publishes (``backport``). EHRs put a Subscription into
``error`` after failed deliveries and stop notifying; the keeper notices, replaces it, and asks the reconciler to
poll so the studies announced meanwhile are not missed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imaging_cds.errors import TransientError
from imaging_cds.fhir.client import FhirClient, FhirError

log = logging.getLogger("imaging_cds.gateway")

CRITERIA = "ImagingStudy?status=available"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
BACKPORT_PROFILE = f"{BACKPORT}/backport-subscription"
BACKPORT_CONTENT = f"{BACKPORT}/backport-payload-content"
BACKPORT_FILTER = f"{BACKPORT}/backport-filter-criteria"
BACKPORT_HEARTBEAT = f"{BACKPORT}/backport-heartbeat-period"


@dataclass(frozen=True)
class SubscriptionSpec:
    endpoint: str
    secret: str
    mode: str = "rest-hook"  # or "backport"
    topic: str = ""
    content: str = "id-only"
    heartbeat_s: int = 120

    @property
    def criteria(self) -> str:
        return self.topic if self.mode == "backport" else CRITERIA

    def resource(self) -> dict[str, Any]:
        channel: dict[str, Any] = {"type": "rest-hook", "endpoint": self.endpoint, "payload": "application/fhir+json"}
        if self.secret:
            channel["header"] = [f"Authorization: Bearer {self.secret}"]
        resource: dict[str, Any] = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "imaging-cds: analyse new imaging studies and post AI results",
            "criteria": self.criteria,
            "channel": channel,
        }
        if self.mode == "backport":
            resource["meta"] = {"profile": [BACKPORT_PROFILE]}
            resource["_criteria"] = {
                "extension": [{"url": BACKPORT_FILTER, "valueString": "ImagingStudy?status=available"}]
            }
            channel["_payload"] = {"extension": [{"url": BACKPORT_CONTENT, "valueCode": self.content}]}
            channel["extension"] = [{"url": BACKPORT_HEARTBEAT, "valueUnsignedInt": self.heartbeat_s}]
        return resource

    def is_ours(self, existing: dict[str, Any]) -> bool:
        channel = existing.get("channel") or {}
        return channel.get("endpoint") == self.endpoint and existing.get("criteria") == self.criteria


class SubscriptionKeeper:
    """Keeps exactly one working Subscription of ours on the EHR."""

    def __init__(self, fhir: FhirClient, spec: SubscriptionSpec, on_replaced: Callable[[], None]) -> None:
        self.fhir = fhir
        self.spec = spec
        self.on_replaced = on_replaced
        self.subscription_id = ""

    def ensure(self) -> str:
        """Keep one working Subscription of ours and remove the others; create one when none works.

        Of several working ones (two gateway replicas created one each at the same moment) every replica keeps the
        one with the smallest id, so they converge instead of deleting each other's.
        """
        # `url` is R4's search parameter for Subscription.channel.endpoint; is_ours checks each match anyway.
        ours = [s for s in self.fhir.search("Subscription", {"url": self.spec.endpoint}) if self.spec.is_ours(s)]
        working = sorted(
            str(s["id"]) for s in ours if s.get("status") in ("requested", "active") and self._header_current(s)
        )
        keep = working[0] if working else ""
        for existing in ours:
            if str(existing["id"]) != keep:
                self.fhir.delete(f"Subscription/{existing['id']}")
        if not keep:
            keep = str(self.fhir.create(self.spec.resource())["id"])
            log.info("created Subscription/%s (%s) for %s", keep, self.spec.mode, self.spec.criteria)
        self.subscription_id = keep
        return keep

    def check(self) -> None:
        """Re-create the Subscription when the EHR has put it in error, switched it off or deleted it."""
        current = self.fhir.read(f"Subscription/{self.subscription_id}") if self.subscription_id else None
        status = (current or {}).get("status")
        if status in ("requested", "active"):
            self.ensure()  # also removes duplicates another replica may have created
            return
        log.warning(
            "Subscription/%s is %s (%s); re-creating it and polling for missed studies",
            self.subscription_id,
            status or "gone",
            str((current or {}).get("error", ""))[:200],
        )
        self.ensure()
        self.on_replaced()

    def run(self, stop: threading.Event, every_s: float) -> None:
        while not stop.wait(every_s):
            try:
                self.check()
            except (TransientError, FhirError) as err:
                log.warning("subscription check failed (%s); next try in %g s", err, every_s)

    def _header_current(self, existing: dict[str, Any]) -> bool:
        headers = (existing.get("channel") or {}).get("header") or []
        return not self.spec.secret or f"Authorization: Bearer {self.spec.secret}" in headers
