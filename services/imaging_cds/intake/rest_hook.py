"""FHIR R4 rest-hook Subscription notifications: from an HTTP request to the study it announces.

An R4 rest-hook server either PUTs the changed resource to ``{endpoint}/ImagingStudy/{id}`` (full payload) or
POSTs to the endpoint with an empty body (id-only servers, ping style). Either way the result is a ``StudyRef``,
or an InvalidNotificationError that the gateway answers with HTTP 400 and that enqueues nothing.
"""

from __future__ import annotations

import json
import re

from imaging_cds.errors import InvalidNotificationError
from imaging_cds.fhir.imaging_study import parse_imaging_study
from imaging_cds.jobs.model import StudyRef

_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
ANALYSABLE_STATUSES = ("available",)


def is_fhir_id(value: str) -> bool:
    return bool(_FHIR_ID.match(value))


def parse_notification(path_id: str | None, body: bytes, content_type: str = "") -> StudyRef | None:
    """The study a notification announces, or None for a notification we deliberately ignore (wrong status).

    ``path_id`` is the id in ``.../ImagingStudy/{id}`` when the server addressed the resource; ``body`` the raw
    request body (may be empty).
    """
    if path_id is not None and not is_fhir_id(path_id):
        raise InvalidNotificationError("the ImagingStudy id in the URL is not a valid FHIR id")
    if not body.strip():
        if path_id is None:
            raise InvalidNotificationError("an empty notification must name the ImagingStudy in its URL")
        return StudyRef(imaging_study_id=path_id)
    if content_type and "json" not in content_type.lower():
        raise InvalidNotificationError(f"expected application/fhir+json, got {content_type.split(';')[0]}")
    try:
        resource = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidNotificationError("the body is not valid JSON") from err
    study = parse_imaging_study(resource)
    if path_id is not None and study.context.imaging_study_id != path_id:
        raise InvalidNotificationError("the ImagingStudy id in the body differs from the one in the URL")
    if study.status not in ANALYSABLE_STATUSES:
        return None
    return StudyRef(
        imaging_study_id=study.context.imaging_study_id,
        study_uid=study.context.study_uid,
        orders=service_requests(study.context.based_on),
    )


def service_requests(references: tuple[str, ...]) -> tuple[str, ...]:
    """The 'ServiceRequest/id' among an ImagingStudy's basedOn references (relative or absolute)."""
    found = []
    for ref in references:
        parts = ref.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "ServiceRequest" and is_fhir_id(parts[-1]):
            found.append(f"ServiceRequest/{parts[-1]}")
    return tuple(found)
