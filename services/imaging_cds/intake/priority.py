"""A study's priority from its order: STAT when the ServiceRequest it is based on says stat, asap or urgent."""

from __future__ import annotations

from typing import Any

from imaging_cds.jobs.model import Priority

URGENT_REQUEST_PRIORITIES = ("stat", "asap", "urgent")  # FHIR R4 request-priority codes above routine


def priority_from_orders(orders: list[dict[str, Any]]) -> Priority:
    """STAT if any order (ServiceRequest) the study is based on is stat, asap or urgent; else routine."""
    for order in orders:
        if str(order.get("priority", "")).lower() in URGENT_REQUEST_PRIORITIES:
            return Priority.STAT
    return Priority.ROUTINE
