import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imaging_cds.errors import InvalidNotificationError
from imaging_cds.intake.rest_hook import parse_notification

UID = "1.2.826.0.1.3680043.8.498.12345"


def imaging_study(**overrides: object) -> dict[str, object]:
    resource: dict[str, object] = {
        "resourceType": "ImagingStudy",
        "id": "42",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"}],
        "subject": {"reference": "Patient/7"},
    }
    resource.update(overrides)
    return resource


def test_full_resource_notification_names_the_study() -> None:
    ref = parse_notification("42", json.dumps(imaging_study()).encode(), "application/fhir+json")
    assert ref is not None
    assert (ref.imaging_study_id, ref.study_uid) == ("42", UID)


def test_empty_notification_names_the_study_from_the_url() -> None:
    ref = parse_notification("42", b"", "")
    assert ref is not None and ref.imaging_study_id == "42" and ref.study_uid == ""


def test_study_not_yet_available_is_ignored_not_queued() -> None:
    assert parse_notification("42", json.dumps(imaging_study(status="registered")).encode()) is None


@pytest.mark.parametrize(
    ("path_id", "body", "why"),
    [
        (None, b"", "must name the ImagingStudy"),
        ("42", b"{not json", "not valid JSON"),
        ("42", json.dumps({"resourceType": "Patient", "id": "42"}).encode(), "expected an ImagingStudy"),
        ("43", json.dumps(imaging_study()).encode(), "differs"),
        ("42", json.dumps(imaging_study(identifier=[])).encode(), "no DICOM Study Instance UID"),
        ("42", json.dumps(imaging_study(subject=None)).encode(), "no subject"),
        ("../etc", b"", "not a valid FHIR id"),
        (
            "42",
            json.dumps(imaging_study(identifier=[{"system": "urn:dicom:uid", "value": "urn:oid:1.02.x"}])).encode(),
            "no DICOM Study Instance UID",
        ),
    ],
)
def test_malformed_notifications_are_refused_with_a_reason(path_id: str | None, body: bytes, why: str) -> None:
    with pytest.raises(InvalidNotificationError, match=why):
        parse_notification(path_id, body, "application/fhir+json")


@settings(max_examples=300, deadline=None)
@given(
    path_id=st.one_of(st.none(), st.text(max_size=80)),
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_arbitrary_input_is_accepted_or_refused_never_crashes(path_id: str | None, body: bytes) -> None:
    with contextlib.suppress(InvalidNotificationError):
        parse_notification(path_id, body, "application/fhir+json")


def test_orders_the_study_is_based_on_set_its_priority() -> None:
    from imaging_cds.intake.priority import priority_from_orders
    from imaging_cds.jobs.model import Priority

    study = imaging_study(basedOn=[{"reference": "http://ehr/fhir/ServiceRequest/9"}, {"reference": "CarePlan/1"}])
    ref = parse_notification("42", json.dumps(study).encode())
    assert ref is not None and ref.orders == ("ServiceRequest/9",)
    assert priority_from_orders([{"priority": "stat"}]) is Priority.STAT
    assert priority_from_orders([{"priority": "urgent"}, {"priority": "routine"}]) is Priority.STAT
    assert priority_from_orders([{"priority": "routine"}, {}]) is Priority.ROUTINE
    assert priority_from_orders([]) is Priority.ROUTINE
