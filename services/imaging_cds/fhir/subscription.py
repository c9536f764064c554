"""Our R4 rest-hook Subscription on the EHR: created at gateway start-up, reused when it already exists."""

from __future__ import annotations

import logging
from typing import Any

from imaging_cds.fhir.client import FhirClient

log = logging.getLogger("imaging_cds.gateway")

CRITERIA = "ImagingStudy?status=available"


def subscription_resource(endpoint: str, secret: str, criteria: str = CRITERIA) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}
    if secret:
        channel["header"] = [f"Authorization: Bearer {secret}"]
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "imaging-cds: analyse new imaging studies and post AI results",
        "criteria": criteria,
        "channel": channel,
    }


def ensure_subscription(fhir: FhirClient, endpoint: str, secret: str, criteria: str = CRITERIA) -> str:
    """The id of an active or requested Subscription of ours for `criteria`, creating one when none exists."""
    # `url` is R4's search parameter for Subscription.channel.endpoint; the filter below still checks each match.
    for existing in fhir.search("Subscription", {"url": endpoint}):
        channel = existing.get("channel") or {}
        if (
            channel.get("endpoint") == endpoint
            and existing.get("criteria") == criteria
            and existing.get("status") in ("requested", "active")
        ):
            if secret and f"Authorization: Bearer {secret}" not in (channel.get("header") or []):
                existing["channel"] = subscription_resource(endpoint, secret, criteria)["channel"]
                fhir.update(existing)
            return str(existing["id"])
    created = fhir.create(subscription_resource(endpoint, secret, criteria))
    log.info("created Subscription/%s for %s", created.get("id"), criteria)
    return str(created["id"])
