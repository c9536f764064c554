"""The FHIR results: house conventions, findings with components, amendments, cancelled reports; every resource valid
against the R4 JSON schema and Medplum's validator."""

import base64
import copy
from typing import Any

import pytest

from imaging_cds.fhir import codes
from imaging_cds.fhir.charting import report_reference
from imaging_cds.fhir.report import (
    IDENTIFIER_SYSTEM,
    Algorithm,
    CodedFinding,
    Component,
    Findings,
    MeasuredValue,
    PreviousReport,
    StudyContext,
    build_cancelled_report_bundle,
    build_report_bundle,
    not_analysed_conclusion,
    report_identifier,
)
from imaging_cds.fhir.subscription import SubscriptionSpec
from tests.fhir_schema import r4_errors
from tests.fhir_validation import assert_valid_r4, bundle_and_entries, r4_problems

STUDY = StudyContext(
    imaging_study_id="17",
    study_uid="1.2.826.0.1.3680043.8.498.1",
    subject="Patient/5",
    encounter="Encounter/9",
    based_on=("ServiceRequest/42",),
)
ALGORITHM = Algorithm(name="lung-density", title="Lung density", version="1.0.0", served_version="1")
NEWER = Algorithm(name="lung-density", title="Lung density", version="1.1.0", served_version="2")
EMPHYSEMA = CodedFinding(
    key=codes.EMPHYSEMA_FINDING_KEY,
    code=codes.PULMONARY_EMPHYSEMA,
    value=codes.PRESENT,
    interpretation=codes.INTERPRETATION_ABNORMAL,
    components=(
        Component(codes.LAA950_VOLUME, quantity=371.4, unit=codes.MILLILITRE, decimals=0),
        Component(codes.FINDING_SITE, concept=codes.UPPER_ZONE),
        Component(codes.LATERALITY, concept=codes.RIGHT_AND_LEFT),
    ),
)
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
    coded_findings=(EMPHYSEMA,),
)
NO_EMPHYSEMA = Findings(
    series_uid=FINDINGS.series_uid,
    measurements=(
        MeasuredValue(codes.LUNG_VOLUME, 5123.46),
        MeasuredValue(codes.LAA950, 1.2, codes.INTERPRETATION_NORMAL),
    ),
    conclusion="LAA-950 1.2 %: no quantitative CT evidence of emphysema.",
    conclusion_codes=(),
    key_image_png=b"\x89PNG\r\n\x1a\nfake",
    key_image_title="key image",
    coded_findings=(
        CodedFinding(
            key=codes.EMPHYSEMA_FINDING_KEY,
            code=codes.PULMONARY_EMPHYSEMA,
            value=codes.ABSENT,
            interpretation=codes.INTERPRETATION_NORMAL,
            components=(Component(codes.LAA950_VOLUME, quantity=61.0, unit=codes.MILLILITRE, decimals=0),),
        ),
    ),
)
ISSUED = "2026-11-25T10:00:00+00:00"


def bundle(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "study": STUDY,
        "algorithm": ALGORITHM,
        "findings": FINDINGS,
        "status": "preliminary",
        "issued": ISSUED,
    }
    args.update(kw)
    return build_report_bundle(**args)


def resources(b: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == rtype]


def stored(b: dict[str, Any], version: str = "1") -> PreviousReport:
    """What a FHIR server holds after the Bundle: ids assigned, urn:uuid references resolved, a versionId."""
    ids = {e["fullUrl"]: f"{e['resource']['resourceType']}/{n}" for n, e in enumerate(b["entry"], start=100)}
    found = []
    for e in b["entry"]:
        r = copy.deepcopy(e["resource"])
        r["id"] = ids[e["fullUrl"]].split("/")[1]
        r["meta"] = {**r.get("meta", {}), "versionId": version, "lastUpdated": "2026-11-25T10:00:01Z"}
        for ref in [*r.get("result", []), r.get("device") or {}]:
            if ref.get("reference") in ids:
                ref["reference"] = ids[ref["reference"]]
        found.append(r)
    previous = PreviousReport.from_search(found, report_identifier(STUDY.study_uid, ALGORITHM))
    assert previous is not None
    return previous


def test_every_resource_of_every_kind_of_report_is_valid_r4() -> None:
    """The R4 JSON schema and Medplum's validator (invariants included), on every Bundle the builders make."""
    first = bundle()
    amendment = bundle(algorithm=NEWER, previous=stored(first))
    cancelled = build_cancelled_report_bundle(STUDY, ALGORITHM, "no series fits: found MR", ISSUED)
    kinds = [
        first,
        bundle(findings=NO_EMPHYSEMA, status="final"),
        bundle(study=StudyContext(imaging_study_id="3", study_uid="1.2.3", subject="Patient/1")),
        amendment,
        bundle(algorithm=NEWER, findings=NO_EMPHYSEMA, previous=stored(first)),
        cancelled,
        bundle(previous=stored(cancelled)),
    ]
    assert_valid_r4([r for b in kinds for r in bundle_and_entries(b)])


def test_the_validators_catch_an_invalid_code_and_a_broken_invariant() -> None:
    report = copy.deepcopy(resources(bundle(), "DiagnosticReport")[0])
    report["status"] = "done"
    assert any("status" in e for e in r4_errors(report))
    observation = copy.deepcopy(resources(bundle(), "Observation")[0])
    observation["dataAbsentReason"] = {"text": "not measured"}  # obs-6: never beside a value
    (problems,) = r4_problems([observation]).values()
    assert any("obs-6" in p for p in problems), problems


def test_subscriptions_we_create_are_valid_r4() -> None:
    rest_hook = SubscriptionSpec(endpoint="https://cds.example/fhir/notify", secret="s3cret").resource()
    backport = SubscriptionSpec(
        endpoint="https://cds.example/fhir/notify",
        secret="s3cret",
        mode="backport",
        topic="http://ehr.example/SubscriptionTopic/imaging-study-available",
    ).resource()
    assert_valid_r4([rest_hook, backport])


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
    assert report["meta"]["tag"][0] == {
        "system": codes.RESULT_VERSION_SYSTEM,
        "code": "lung-density@1.0.0",
        "display": "Lung density 1.0.0",
    }
    assert report["subject"] == {"reference": "Patient/5"}
    assert report["encounter"] == {"reference": "Encounter/9"}
    assert report["basedOn"] == [{"reference": "ServiceRequest/42"}]
    assert report["imagingStudy"] == [{"reference": "ImagingStudy/17"}]
    assert len(report["result"]) == 5
    assert report["conclusion"] == "LAA-950 7.2 %: emphysema."
    assert report["conclusionCode"][0]["coding"][0]["code"] == "87433001"
    forms = {f["contentType"]: f for f in report["presentedForm"]}
    assert base64.b64decode(forms["image/png"]["data"]).startswith(b"\x89PNG")
    summary = base64.b64decode(forms["text/plain; charset=utf-8"]["data"]).decode()
    assert "awaiting review by a radiologist" in summary and "5123 mL" in summary
    assert "Pulmonary emphysema: Present (Volume of lung below -950 HU (LAA-950 volume) 371 mL;" in summary
    (provenance,) = resources(b, "Provenance")
    assert provenance["activity"]["coding"][0]["code"] == "CREATE"
    assert provenance["target"] == [{"reference": b["entry"][-2]["fullUrl"]}]


def test_a_report_without_a_conclusion_code_leaves_the_element_out() -> None:
    (report,) = resources(bundle(findings=NO_EMPHYSEMA), "DiagnosticReport")
    assert "conclusionCode" not in report and "basedOn" in report


def test_observations_carry_ucum_quantities_body_site_device_and_study() -> None:
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
        assert obs["issued"].startswith("2026-11-25T10:00:00") and obs["meta"]["security"][0]["code"] == "AIAST"
    assert device["deviceName"][0]["name"] == "Lung density" and device["modelNumber"] == "lung-density"
    assert {(v["type"]["text"], v["value"]) for v in device["version"]} == {
        ("algorithm", "1.0.0"),
        ("triton-model-version", "1"),
    }


def test_a_finding_has_its_size_and_location_as_components() -> None:
    finding = next(o for o in resources(bundle(), "Observation") if o["code"]["coding"][0]["code"] == "87433001")
    assert finding["valueCodeableConcept"]["coding"][0]["code"] == codes.PRESENT.code
    assert finding["interpretation"][0]["coding"][0]["code"] == "A"
    size, site, side = finding["component"]
    assert size["code"]["coding"][0]["code"] == "laa-950-volume"
    assert size["valueQuantity"] == {"value": 371.0, "unit": "mL", "system": codes.UCUM, "code": "mL"}
    assert site["code"]["coding"][0] == {"system": codes.SNOMED, "code": "363698007", "display": "Finding site"}
    assert site["valueCodeableConcept"]["coding"][0]["code"] == "upper"
    assert side["code"]["coding"][0]["code"] == "272741003"
    assert side["valueCodeableConcept"]["coding"][0] == {
        "system": codes.SNOMED,
        "code": "51440002",
        "display": "Right and left",
    }


def test_a_component_is_a_size_or_a_location_never_neither() -> None:
    with pytest.raises(ValueError, match="not both or neither"):
        Component(codes.LAA950_VOLUME)
    with pytest.raises(ValueError, match="UCUM unit"):
        Component(codes.LAA950_VOLUME, quantity=3.0)
    with pytest.raises(ValueError, match="not both"):
        Component(codes.FINDING_SITE, quantity=3.0, unit=codes.MILLILITRE, concept=codes.UPPER_ZONE)


def test_replay_builds_identical_identifiers_and_conditional_creates() -> None:
    first, second = bundle(), bundle(issued="2026-11-26T00:00:00+00:00")
    ids = lambda b: [e["fullUrl"] for e in b["entry"]]  # noqa: E731
    assert ids(first) == ids(second)
    for entry in first["entry"]:
        key = "_tag" if entry["resource"]["resourceType"] == "Provenance" else "identifier"
        assert entry["request"]["method"] == "POST"
        assert entry["request"]["ifNoneExist"] == f"{key}=urn:ietf:rfc:3986|{entry['fullUrl']}"


def test_a_new_model_version_keeps_the_report_and_result_identifiers() -> None:
    old = {e["resource"]["resourceType"]: e["fullUrl"] for e in bundle()["entry"]}
    new = {e["resource"]["resourceType"]: e["fullUrl"] for e in bundle(algorithm=NEWER)["entry"]}
    assert old["DiagnosticReport"] == new["DiagnosticReport"]
    assert old["Observation"] == new["Observation"]
    assert old["Device"] != new["Device"] and old["Provenance"] != new["Provenance"]


def test_a_new_model_version_amends_the_report_in_place() -> None:
    previous = stored(bundle())
    amendment = bundle(algorithm=NEWER, previous=previous)
    entries = {e["resource"]["resourceType"] + e["request"]["url"]: e for e in amendment["entry"]}
    report_entry = entries[f"DiagnosticReportDiagnosticReport/{previous.id}"]
    assert report_entry["request"] == {
        "method": "PUT",
        "url": f"DiagnosticReport/{previous.id}",
        "ifMatch": 'W/"1"',
    }
    report = report_entry["resource"]
    assert report["id"] == previous.id and report["status"] == "amended"
    assert report["identifier"] == previous.resource["identifier"]
    assert report["meta"]["tag"][0]["code"] == "lung-density@1.1.0"
    assert sorted(r["reference"] for r in report["result"]) == sorted(
        f"Observation/{o['id']}" for o in previous.results.values()
    )
    summary = base64.b64decode(report["presentedForm"][1]["data"]).decode()
    assert "amended: replaces the earlier AI result" in summary
    updated = [e for e in amendment["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert len(updated) == 5
    for e in updated:
        assert e["request"]["method"] == "PUT" and e["request"]["ifMatch"] == 'W/"1"'
        assert e["resource"]["status"] == "amended" and "1.1.0" in e["resource"]["method"]["text"]
    (device,) = resources(amendment, "Device")
    assert {v["value"] for v in device["version"]} == {"1.1.0", "2"}
    (provenance,) = resources(amendment, "Provenance")
    assert provenance["activity"]["coding"][0]["code"] == "UPDATE"
    assert provenance["target"] == [{"reference": f"DiagnosticReport/{previous.id}"}]


def test_an_amendment_withdraws_results_the_new_version_no_longer_gives_and_adds_new_ones() -> None:
    previous = stored(bundle())
    fewer = Findings(
        series_uid=FINDINGS.series_uid,
        measurements=(MeasuredValue(codes.LUNG_VOLUME, 5000.0), MeasuredValue(codes.P15_DENSITY, -930.0)),
        conclusion="x",
        conclusion_codes=(),
        key_image_png=b"\x89PNG",
        key_image_title="key image",
    )
    amendment = bundle(algorithm=NEWER, findings=fewer, previous=previous)
    observations = [e for e in amendment["entry"] if e["resource"]["resourceType"] == "Observation"]
    by_status: dict[str, int] = {}
    for e in observations:
        by_status[e["resource"]["status"]] = by_status.get(e["resource"]["status"], 0) + 1
    assert by_status == {"amended": 2, "cancelled": 3}
    (report,) = resources(amendment, "DiagnosticReport")
    assert len(report["result"]) == 2
    # A result with no earlier version is created or, if an earlier amendment withdrew it, updated by identifier.
    previous_without_p15 = PreviousReport(
        previous.resource,
        {k: v for k, v in previous.results.items() if v["code"]["coding"][0]["code"] != "p15-lung-density"},
    )
    again = bundle(algorithm=NEWER, findings=fewer, previous=previous_without_p15)
    (conditional,) = [e for e in again["entry"] if "?" in e["request"]["url"]]
    assert conditional["request"] == {
        "method": "PUT",
        "url": f"Observation?identifier={IDENTIFIER_SYSTEM}|{conditional['fullUrl']}",
    }
    assert_valid_r4(bundle_and_entries(amendment))


def test_a_study_that_could_not_be_analysed_gets_a_cancelled_report_saying_why() -> None:
    reason = "no series fits: expected CT of the chest with at least 100 images, found MR (1 image)"
    b = build_cancelled_report_bundle(STUDY, ALGORITHM, reason, ISSUED)
    assert [e["resource"]["resourceType"] for e in b["entry"]] == ["Device", "DiagnosticReport", "Provenance"]
    (report,) = resources(b, "DiagnosticReport")
    assert report["status"] == "cancelled"
    assert report["identifier"][0]["value"] == report_identifier(STUDY.study_uid, ALGORITHM)
    assert report["conclusion"].startswith("Not analysed: the AI (Lung density, lung-density 1.0.0) did not run")
    assert reason in report["conclusion"] and "read the images as usual" in report["conclusion"]
    assert "result" not in report and report["meta"]["security"][0]["code"] == "AIAST"
    assert [f["contentType"] for f in report["presentedForm"]] == ["text/plain; charset=utf-8"]
    assert all(e["request"]["method"] == "POST" and e["request"]["ifNoneExist"] for e in b["entry"])
    # A result that arrives later (images complete, a fix) replaces the cancelled report, with the configured status.
    replaced = bundle(previous=stored(b))
    (report,) = resources(replaced, "DiagnosticReport")
    assert report["status"] == "preliminary" and len(report["result"]) == 5


def test_a_report_without_results_is_refused() -> None:
    empty = Findings("1.2.3", (), "", (), b"", "")
    with pytest.raises(ValueError, match="no results"):
        bundle(findings=empty)


def test_two_reports_with_one_identifier_are_refused() -> None:
    (report,) = resources(bundle(), "DiagnosticReport")
    twins = [{**report, "id": "a"}, {**report, "id": "b"}]
    with pytest.raises(ValueError, match="2 reports carry the identifier"):
        PreviousReport.from_search(twins, report["identifier"][0]["value"])


@pytest.mark.parametrize(
    "location",
    [
        "DiagnosticReport/abc",
        "DiagnosticReport/abc/_history/1",
        "http://ehr.example/fhir/DiagnosticReport/abc/_history/2",
    ],
)
def test_report_reference_is_read_from_relative_and_absolute_locations(location: str) -> None:
    response = {"entry": [{"response": {"location": "Observation/1"}}, {"response": {"location": location}}]}
    assert report_reference("1.2", response) == "DiagnosticReport/abc"


def test_a_long_reason_keeps_what_failed_and_what_was_found() -> None:
    reason = "no series fits the model's rule [" + "rule " * 200 + "]: series 1.2.3: modality MR, expected CT"
    conclusion = not_analysed_conclusion(ALGORITHM, reason)
    assert "no series fits the model's rule" in conclusion and "modality MR, expected CT." in conclusion
    assert " ... " in conclusion and len(conclusion) < 800
