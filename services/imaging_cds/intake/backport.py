"""R4 Subscriptions Backport (topic-based) notifications: handshake, heartbeat, event-notification.

A notification is a ``history`` Bundle whose first entry is a ``Parameters`` resource (the backport
SubscriptionStatus) with ``type``, ``subscription``, ``events-since-subscription-start`` and one
``notification-event`` per event (``event-number``, ``focus``). With ``full-resource`` payloads the focus resources
follow as further entries; with ``id-only`` only the focus reference is given; with ``empty`` neither, and the
receiver must query.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from imaging_cds.errors import InvalidNotificationError
from imaging_cds.fhir.imaging_study import parse_imaging_study
from imaging_cds.intake.rest_hook import ANALYSABLE_STATUSES, is_fhir_id, service_requests
from imaging_cds.jobs.model import StudyRef

NOTIFICATION_TYPES = ("handshake", "heartbeat", "event-notification", "query-status", "query-event")


@dataclass(frozen=True)
class BackportNotification:
    type: str
    subscription: str  # reference as sent, e.g. http://ehr/fhir/Subscription/123
    events_since_start: int | None
    event_numbers: tuple[int, ...]
    studies: tuple[StudyRef, ...]  # the ImagingStudies to queue (focus references and full resources)
    unresolved_events: int = 0  # events with no focus (empty payload): the receiver must query
    ignored: tuple[str, ...] = field(default=())

    @property
    def subscription_id(self) -> str:
        parts = [p for p in self.subscription.split("/") if p]
        return parts[-1] if parts else ""


def is_backport_bundle(body: Any) -> bool:
    return isinstance(body, dict) and body.get("resourceType") == "Bundle" and body.get("type") == "history"


def parse_backport(body: bytes) -> BackportNotification:
    try:
        bundle = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidNotificationError("the body is not valid JSON") from err
    if not is_backport_bundle(bundle):
        raise InvalidNotificationError("expected a history Bundle (Subscriptions Backport notification)")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise InvalidNotificationError("the notification Bundle has no entries")
    status = entries[0].get("resource")
    if not isinstance(status, dict) or status.get("resourceType") != "Parameters":
        raise InvalidNotificationError("the first entry must be the Parameters (SubscriptionStatus)")
    params = _parameters(status)
    kind = params.get("type")
    if kind not in NOTIFICATION_TYPES:
        raise InvalidNotificationError(f"unknown notification type {str(kind)[:40]!r}")
    events_since = _int(params.get("events-since-subscription-start"), "events-since-subscription-start")
    numbers: list[int] = []
    studies: dict[str, StudyRef] = {}
    ignored: list[str] = []
    unresolved = 0
    for event in params.get("notification-event", []):
        numbers.append(_int(event.get("event-number"), "event-number") or 0)
        focus = event.get("focus")
        if not focus:
            unresolved += 1
            continue
        parts = str(focus).rstrip("/").split("/")
        rtype, rid = (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
        if rtype != "ImagingStudy" or not is_fhir_id(rid):
            ignored.append(str(focus)[:80])
            continue
        studies.setdefault(rid, StudyRef(imaging_study_id=rid))
    for entry in entries[1:]:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "ImagingStudy":
            study = parse_imaging_study(resource)
            ref = StudyRef(
                study.context.imaging_study_id, study.context.study_uid, service_requests(study.context.based_on)
            )
            if study.status in ANALYSABLE_STATUSES:
                studies[ref.imaging_study_id] = ref
            else:
                studies.pop(ref.imaging_study_id, None)
    return BackportNotification(
        type=str(kind),
        subscription=str(params.get("subscription", "")),
        events_since_start=events_since,
        event_numbers=tuple(numbers),
        studies=tuple(studies.values()),
        unresolved_events=unresolved,
        ignored=tuple(ignored),
    )


def _parameters(resource: dict[str, Any]) -> dict[str, Any]:
    """Parameters -> {name: value}; notification-event -> a list of {part name: value}; camelCase accepted."""
    out: dict[str, Any] = {"notification-event": []}
    for p in resource.get("parameter") or []:
        if not isinstance(p, dict):
            continue
        name = _kebab(str(p.get("name", "")))
        if name == "notification-event":
            out[name].append(
                {_kebab(str(q.get("name", ""))): _value(q) for q in p.get("part") or [] if isinstance(q, dict)}
            )
        else:
            out[name] = _value(p)
    return out


def _value(p: dict[str, Any]) -> Any:
    for key, value in p.items():
        if key.startswith("value"):
            return value.get("reference") if isinstance(value, dict) else value
    return None


def _kebab(name: str) -> str:
    return "".join(f"-{c.lower()}" if c.isupper() else c for c in name)


def _int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value))
    except ValueError as err:
        raise InvalidNotificationError(f"{what} is not a number") from err
