"""Radiomics in the report: the manifest's ``radiomics`` section, the features of a segmented region, and one FHIR
Observation per region whose components are the features coded by IBSI identifier."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from imaging_cds.analysis.findings import lung_density_findings, region_features
from imaging_cds.analysis.radiomics import IBSI_CONFIGURATIONS, FeatureDef, config_from_mapping
from imaging_cds.analysis.radiomics.features import FEATURES
from imaging_cds.fhir import codes
from imaging_cds.fhir.codes import Code, Unit
from imaging_cds.fhir.report import (
    Algorithm,
    FeatureValue,
    Findings,
    MeasuredValue,
    RegionFeatures,
    StudyContext,
    build_report_bundle,
    summary_text,
)
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.manifest import ManifestError, load_manifest
from imaging_cds.sample.synthetic_ct import LUNG_LABELS, make_chest_ct
from tests.fhir_schema import r4_errors

REPO = Path(__file__).resolve().parents[2]
LUNG_MODEL = REPO / "triton_repo" / "lung-density"
STUDY = StudyContext(imaging_study_id="17", study_uid="1.2.826.0.1.3680043.8.498.1", subject="Patient/5")
ALGORITHM = Algorithm(name="lung-density", title="Lung density", version="1.0.0", served_version="1")
ISSUED = "2026-11-25T10:00:00+00:00"


def _ibsi(key: str) -> Code:
    f: FeatureDef = FEATURES[key]
    return Code(codes.IBSI, f.ibsi_id, f.name.split(" (")[0])


REGION = RegionFeatures(
    key="radiomics-lung",
    region=codes.LUNG_STRUCTURE,
    method="IBSI 1 configuration C: 3D; 2 x 2 x 2 mm",
    features=(
        FeatureValue(_ibsi("Q4LE"), -812.345678, Unit("[hnsf'U]", "HU")),
        FeatureValue(_ibsi("KE2A"), 1.23456789),
        FeatureValue(_ibsi("ECT3"), 12345.678, Unit("[hnsf'U]2", "HU2")),
        FeatureValue(
            _ibsi("GYBY.ITBB"),
            0.111,
            aggregation=Code(codes.IBSI, "ITBB", "3D, averaged over directions"),
            text=FEATURES["GYBY.ITBB"].name,
        ),
        FeatureValue(
            _ibsi("GYBY.IAZD"),
            0.112,
            aggregation=Code(codes.IBSI, "IAZD", "3D, directions merged"),
            text=FEATURES["GYBY.IAZD"].name,
        ),
        FeatureValue(_ibsi("N365"), math.nan),
    ),
)
FINDINGS = Findings(
    series_uid="1.2.826.0.1.3680043.8.498.2",
    measurements=(MeasuredValue(codes.LUNG_VOLUME, 5123.46),),
    conclusion="No emphysema.",
    conclusion_codes=(),
    key_image_png=b"\x89PNG\r\n\x1a\nfake",
    key_image_title="key image",
    radiomics=(REGION,),
)


def _observations(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["resource"]["code"]["coding"][0]["code"]: e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    }


def test_lung_density_manifest_asks_for_configuration_c_statistics_and_histogram() -> None:
    radiomics = load_manifest(LUNG_MODEL).radiomics
    assert radiomics is not None
    assert radiomics.preset() == "C"
    assert radiomics.families == ("statistics", "histogram")
    assert radiomics.describe().startswith("IBSI 1 configuration C: 3D; 2 x 2 x 2 mm")


def _manifest_with(tmp_path: Path, section: Any) -> Path:
    model = tmp_path / "model"
    shutil.copytree(LUNG_MODEL, model, ignore=shutil.ignore_patterns("*.onnx"))
    raw = yaml.safe_load((model / "manifest.yaml").read_text())
    if section is None:
        raw.pop("radiomics")
    else:
        raw["radiomics"] = section
    (model / "manifest.yaml").write_text(yaml.safe_dump(raw))
    return model


def test_manifest_without_radiomics_asks_for_none(tmp_path: Path) -> None:
    assert load_manifest(_manifest_with(tmp_path, None)).radiomics is None


def test_manifest_radiomics_overrides_the_preset(tmp_path: Path) -> None:
    section = {"preset": "D", "families": ["morphology", "glcm"], "aggregations": ["3D"], "spacing_mm": [3, 3, 3]}
    radiomics = load_manifest(_manifest_with(tmp_path, section)).radiomics
    assert radiomics is not None
    assert radiomics.families == ("morphology", "glcm")
    assert radiomics.spacing_mm == (3.0, 3.0, 3.0)
    assert radiomics.preset() is None  # no longer one of the IBSI reference configurations
    assert radiomics.outlier_sigma == 3.0  # from preset D


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"preset": "F", "families": ["statistics"]}, "preset 'F'"),
        ({"preset": "C", "families": ["shape"]}, "unknown feature families"),
        ({"preset": "C"}, "name the IBSI configuration"),
        ("C", "expected a mapping"),
    ],
)
def test_malformed_radiomics_section_names_the_problem(tmp_path: Path, section: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        load_manifest(_manifest_with(tmp_path, section))


def test_radiomics_observation_is_valid_r4_with_a_component_per_feature() -> None:
    bundle = build_report_bundle(STUDY, ALGORITHM, FINDINGS, "preliminary", ISSUED)
    for entry in bundle["entry"]:
        assert r4_errors(entry["resource"]) == [], entry["resource"]["resourceType"]
    assert r4_errors(bundle) == []
    obs = _observations(bundle)["ibsi-radiomics"]
    assert obs["bodySite"]["coding"][0]["code"] == codes.LUNG_STRUCTURE.code
    assert obs["method"]["text"].startswith("IBSI 1 configuration C")
    assert obs["meta"]["security"][0]["code"] == "AIAST"
    assert "valueQuantity" not in obs
    components = obs["component"]
    assert [c["code"]["coding"][0]["code"] for c in components] == ["Q4LE", "KE2A", "ECT3", "GYBY", "GYBY", "N365"]
    assert all(c["code"]["coding"][0]["system"] == "https://theibsi.github.io/ibsi1/" for c in components)
    mean, skew, var, jmax_avg, jmax_mrg, moran = components
    assert mean["code"]["coding"][0]["display"] == "Mean intensity"
    assert mean["valueQuantity"] == {"value": -812.346, "unit": "HU", "system": codes.UCUM, "code": "[hnsf'U]"}
    assert var["valueQuantity"]["code"] == "[hnsf'U]2"
    assert skew["valueQuantity"] == {"value": 1.23457}  # dimensionless: no unit
    assert jmax_avg["extension"] == [
        {
            "url": codes.IBSI_AGGREGATION_EXTENSION,
            "valueCoding": {"system": codes.IBSI, "code": "ITBB", "display": "3D, averaged over directions"},
        }
    ]
    assert jmax_mrg["extension"][0]["valueCoding"]["code"] == "IAZD"
    assert jmax_avg["code"]["text"] != jmax_mrg["code"]["text"]
    assert moran["dataAbsentReason"]["coding"][0]["code"] == "not-a-number"
    assert "valueQuantity" not in moran


def test_radiomics_observation_is_a_report_result_with_a_stable_identifier() -> None:
    first = build_report_bundle(STUDY, ALGORITHM, FINDINGS, "preliminary", ISSUED)
    again = build_report_bundle(STUDY, ALGORITHM, FINDINGS, "final", "2026-11-26T00:00:00+00:00")
    obs = _observations(first)["ibsi-radiomics"]
    (report,) = [e["resource"] for e in first["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert {"reference": obs["identifier"][0]["value"]} in report["result"]
    assert obs["identifier"] == _observations(again)["ibsi-radiomics"]["identifier"]
    assert "Radiomics, Lung structure: 6 IBSI features" in summary_text(ALGORITHM, FINDINGS, "preliminary")


def test_findings_without_radiomics_chart_no_radiomics_observation() -> None:
    plain = Findings(**{**FINDINGS.__dict__, "radiomics": ()})
    assert "ibsi-radiomics" not in _observations(build_report_bundle(STUDY, ALGORITHM, plain, "final", ISSUED))


def test_region_features_code_every_feature_with_its_ibsi_identifier_and_unit() -> None:
    rng = np.random.default_rng(1)
    image = rng.normal(-700, 80, (12, 30, 30))
    mask = np.zeros(image.shape, dtype=bool)
    mask[2:10, 5:25, 6:24] = True
    config = IBSI_CONFIGURATIONS["C"].with_changes(families=("morphology", "statistics", "histogram", "glcm"))
    region = region_features("nodule", codes.LUNG_STRUCTURE, image, mask, (2.0, 1.0, 1.0), config)
    assert region is not None
    assert region.key == "radiomics-nodule"
    assert region.method == config.describe()
    by_code = {(f.code.code, f.aggregation.code if f.aggregation else None): f for f in region.features}
    assert by_code[("Q4LE", None)].unit == Unit("[hnsf'U]", "HU")
    assert by_code[("RNU0", None)].unit == Unit("mm3", "mm3")
    assert by_code[("KE2A", None)].unit is None
    assert by_code[("GYBY", "ITBB")].code == Code(codes.IBSI, "GYBY", "Joint maximum")
    assert by_code[("GYBY", "IAZD")].text == "Joint maximum (3D, directions merged)"
    assert by_code[("GPMT", None)].code.display == "10th discretised intensity percentile"
    assert len(by_code) == len(region.features)  # (identifier, aggregation) tells every feature apart


def test_region_emptied_by_resegmentation_gives_no_features() -> None:
    image = np.full((6, 10, 10), 2000.0)  # all above the [-1000, 400] HU range of configuration C
    mask = np.ones(image.shape, dtype=bool)
    config = IBSI_CONFIGURATIONS["C"].with_changes(families=("statistics",))
    assert region_features("x", codes.LUNG_STRUCTURE, image, mask, (2.0, 2.0, 2.0), config) is None


def test_lung_density_findings_carry_the_lung_radiomics() -> None:
    hu, labels, spacing = make_chest_ct(seed=1, n_slices=40)
    volume = CtVolume("1.2.3", "1.2.3.4", hu, spacing, (0.0, 0.0, 0.0), tuple(str(i) for i in range(len(hu))))
    candidate = (hu < -400).astype(np.uint8)
    config = config_from_mapping({"preset": "C", "families": ["statistics", "histogram"]})
    plain = lung_density_findings(volume, candidate)
    assert plain.radiomics == ()
    findings = lung_density_findings(volume, candidate, radiomics=config)
    (lung,) = findings.radiomics
    assert lung.key == "radiomics-lung" and lung.region == codes.LUNG_STRUCTURE
    values = {f.code.code: f.value for f in lung.features}
    assert len(values) == 18 + 23  # every statistics and intensity histogram feature
    lung_hu = hu[np.isin(labels, LUNG_LABELS)]
    assert -1000 <= values["Q4LE"] <= 400
    assert values["Q4LE"] == pytest.approx(float(np.mean(lung_hu[lung_hu >= -1000])), abs=25)
    assert findings.measurements == plain.measurements  # radiomics adds to the report, changes nothing else
