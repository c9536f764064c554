import json

import pytest

from imaging_cds.errors import InvalidNotificationError
from imaging_cds.intake.backport import parse_backport

UID = "1.2.826.0.1.3680043.8.498.7"


def bundle(kind: str, since: int, events: list[dict[str, object]], resources: list[dict[str, object]] = ()) -> bytes:  # type: ignore[assignment]
    params: list[dict[str, object]] = [
        {"name": "subscription", "valueReference": {"reference": "http://ehr/fhir/Subscription/s1"}},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    for e in events:
        parts: list[dict[str, object]] = [{"name": "event-number", "valueString": str(e["n"])}]
        if "focus" in e:
            parts.append({"name": "focus", "valueReference": {"reference": e["focus"]}})
        params.append({"name": "notification-event", "part": parts})
    entries = [{"resource": {"resourceType": "Parameters", "parameter": params}}]
    entries += [{"resource": r} for r in resources]
    return json.dumps({"resourceType": "Bundle", "type": "history", "entry": entries}).encode()


def test_id_only_event_names_the_study() -> None:
    note = parse_backport(bundle("event-notification", 3, [{"n": 3, "focus": "http://ehr/fhir/ImagingStudy/42"}]))
    assert note.type == "event-notification" and note.subscription_id == "s1"
    assert note.event_numbers == (3,) and note.events_since_start == 3
    assert [s.imaging_study_id for s in note.studies] == ["42"]


def test_full_resource_event_carries_the_study_uid() -> None:
    study = {
        "resourceType": "ImagingStudy",
        "id": "42",
        "status": "available",
        "subject": {"reference": "Patient/1"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{UID}"}],
    }
    note = parse_backport(bundle("event-notification", 1, [{"n": 1, "focus": "ImagingStudy/42"}], [study]))
    assert [(s.imaging_study_id, s.study_uid) for s in note.studies] == [("42", UID)]


def test_empty_event_must_be_resolved_by_querying() -> None:
    note = parse_backport(bundle("event-notification", 5, [{"n": 5}]))
    assert note.studies == () and note.unresolved_events == 1


def test_heartbeat_and_handshake_carry_no_studies() -> None:
    for kind in ("heartbeat", "handshake"):
        note = parse_backport(bundle(kind, 7, []))
        assert note.type == kind and note.studies == () and note.events_since_start == 7


def test_focus_on_another_resource_type_is_ignored() -> None:
    note = parse_backport(bundle("event-notification", 1, [{"n": 1, "focus": "Patient/9"}]))
    assert note.studies == () and note.ignored == ("Patient/9",)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{", "not valid JSON"),
        (json.dumps({"resourceType": "Bundle", "type": "history", "entry": []}).encode(), "no entries"),
        (
            json.dumps(
                {"resourceType": "Bundle", "type": "history", "entry": [{"resource": {"resourceType": "Patient"}}]}
            ).encode(),
            "first entry must be the Parameters",
        ),
        (bundle("dance", 1, []), "unknown notification type"),
        (bundle("heartbeat", 1, []).replace(b'"1"', b'"one"'), "not a number"),
    ],
)
def test_malformed_notifications_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(InvalidNotificationError, match=why):
        parse_backport(body)
