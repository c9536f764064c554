import base64
import copy

import pytest

from imaging_cds.fhir import codes
from imaging_cds.fhir.report import Algorithm, Findings, MeasuredValue, StudyContext, build_report_bundle
from tests.fhir_schema import r4_errors

STUDY = StudyContext(
    imaging_study_id="17", study_uid="1.2.826.0.1.3680043.8.498.1", subject="Patient/5", encounter="Encounter/9"
)
ALGORITHM = Algorithm(name="lung-density", title="Lung density", version="1.0.0", served_version="1")
FINDINGS = Findings(
    series_uid="1.2.826.0.1.3680043.8.498.2",
    measurements=(
        MeasuredValue(codes.LUNG_VOLUME, 5123.46),
        MeasuredValue(codes.LAA950, 7.249, codes.INTERPRETATION_HIGH),
        MeasuredValue(codes.MEAN_LUNG_DENSITY, -861.2),
        MeasuredValue(codes.P15_DENSITY, -935.7),
    ),
    conclusion="LAA-950 7.2 %: emphysema.",
    conclusion_codes=(codes.PULMONARY_EMPHYSEMA,),
    key_image_png=b"\x89PNG\r\n\x1a\nfake",
    key_image_title="key image",
)


def bundle(**kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "study": STUDY,
        "algorithm": ALGORITHM,
        "findings": FINDINGS,
        "status": "preliminary",
        "issued": "2026-11-25T10:00:00+00:00",
    }
    args.update(kw)
    return build_report_bundle(**args)  # type: ignore[arg-type]


def resources(b: dict[str, object], rtype: str) -> list[dict[str, object]]:
    return [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == rtype]  # type: ignore[attr-defined]


def test_every_resource_is_valid_r4() -> None:
    for entry in bundle()["entry"]:  # type: ignore[attr-defined]
        assert r4_errors(entry["resource"]) == [], entry["resource"]["resourceType"]
    assert r4_errors(bundle()) == []


def test_r4_schema_check_catches_an_invalid_resource() -> None:
    report = copy.deepcopy(resources(bundle(), "DiagnosticReport")[0])
    report["status"] = "done"
    assert any("status" in e for e in r4_errors(report))


def test_report_follows_the_house_conventions() -> None:
    b = bundle()
    (report,) = resources(b, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert report["code"]["coding"][0] == {
        "system": codes.LOINC,
        "code": "18748-4",
        "display": "Diagnostic imaging study",
    }
    categories = {(c["system"], c["code"]) for c in report["category"][0]["coding"]}
    assert categories == {(codes.LOINC, "LP29684-5"), (codes.V2_0074, "RAD")}
    assert report["meta"]["security"][0]["code"] == "AIAST"
    assert report["subject"] == {"reference": "Patient/5"}
    assert report["encounter"] == {"reference": "Encounter/9"}
    assert report["imagingStudy"] == [{"reference": "ImagingStudy/17"}]
    assert len(report["result"]) == 4
    assert report["conclusionCode"][0]["coding"][0]["code"] == "87433001"
    forms = {f["contentType"]: f for f in report["presentedForm"]}
    assert base64.b64decode(forms["image/png"]["data"]).startswith(b"\x89PNG")
    summary = base64.b64decode(forms["text/plain; charset=utf-8"]["data"]).decode()
    assert "awaiting review by a radiologist" in summary and "5123 mL" in summary


def test_observations_carry_ucum_quantities_device_and_study() -> None:
    observations = {o["code"]["coding"][0]["code"]: o for o in resources(bundle(), "Observation")}
    (device,) = resources(bundle(), "Device")
    assert observations["lung-volume"]["valueQuantity"] == {
        "value": 5123.0,
        "unit": "mL",
        "system": codes.UCUM,
        "code": "mL",
    }
    assert observations["laa-950"]["valueQuantity"]["value"] == 7.2
    assert observations["laa-950"]["interpretation"][0]["coding"][0]["code"] == "H"
    assert observations["mean-lung-density"]["valueQuantity"]["code"] == "[hnsf'U]"
    for obs in observations.values():
        assert obs["device"]["reference"] == device["identifier"][0]["value"]
        assert obs["derivedFrom"] == [{"reference": "ImagingStudy/17"}]
        assert obs["bodySite"]["coding"][0]["code"] == "39607008"
        assert obs["method"]["coding"][0]["code"] == "370129005"
    assert {v["value"] for v in device["version"]} == {"1.0.0", "1"}


def test_replay_builds_identical_identifiers_and_conditional_creates() -> None:
    first, second = bundle(), bundle(issued="2026-11-26T00:00:00+00:00")
    ids = lambda b: [e["fullUrl"] for e in b["entry"]]  # noqa: E731
    assert ids(first) == ids(second)
    for entry in first["entry"]:  # type: ignore[attr-defined]
        key = "_tag" if entry["resource"]["resourceType"] == "Provenance" else "identifier"
        assert entry["request"]["ifNoneExist"] == f"{key}=urn:ietf:rfc:3986|{entry['fullUrl']}"


def test_new_model_version_gives_new_identifiers() -> None:
    newer = Algorithm(name="lung-density", title="Lung density", version="1.1.0", served_version="2")
    old = {e["fullUrl"] for e in bundle()["entry"]}  # type: ignore[attr-defined]
    new = {e["fullUrl"] for e in bundle(algorithm=newer)["entry"]}  # type: ignore[attr-defined]
    assert not old & new


def test_a_report_without_measurements_is_refused() -> None:
    empty = Findings("1.2.3", (), "", (), b"", "")
    with pytest.raises(ValueError, match="no measurements"):
        bundle(findings=empty)


@pytest.mark.parametrize(
    "location",
    [
        "DiagnosticReport/abc",
        "DiagnosticReport/abc/_history/1",
        "http://ehr.example/fhir/DiagnosticReport/abc/_history/2",
    ],
)
def test_report_reference_is_read_from_relative_and_absolute_locations(location: str) -> None:
    from imaging_cds.worker.service import _report_reference

    response = {"entry": [{"response": {"location": "Observation/1"}}, {"response": {"location": location}}]}
    assert _report_reference("1.2", response) == "DiagnosticReport/abc"
