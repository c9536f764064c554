"""A hospital's own segmentation model, charted from its manifest's ``segmentation`` section: each label's anatomy
code and the measurements it asks for, computed here independently of the code under test."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from imaging_cds.analysis.segmentation import segmentation_findings
from imaging_cds.errors import ModelConfigurationError
from imaging_cds.fhir import codes
from imaging_cds.fhir.report import CodedFinding
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.check import check_model
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import REGION_MEASUREMENTS, ManifestError, ModelManifest, load_manifest
from imaging_cds.sample.synthetic_ct import make_chest_ct, write_sample_study
from imaging_cds.worker.embedded import analyze_folder
from tests.fhir_validation import assert_valid_r4
from tests.model_factory import (
    SEGMENTER_AIR_HU,
    SEGMENTER_BONE_HU,
    write_toy_model,
    write_toy_segmenter,
)

SPACING = (2.0, 0.5, 0.5)  # mm: a voxel is 0.5 uL


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> ModelManifest:
    return load_manifest(write_toy_segmenter(tmp_path_factory.mktemp("segmenter")))


def _volume(hu: np.ndarray) -> CtVolume:
    return CtVolume("1.2.3", "1.2.3.4", hu, SPACING, (0.0, 0.0, 0.0), tuple(str(i) for i in range(len(hu))))


def _by_key(findings: tuple[CodedFinding, ...]) -> dict[str, CodedFinding]:
    return {f.key: f for f in findings}


def test_each_label_is_one_finding_with_the_measurements_its_manifest_asks_for(segmenter: ModelManifest) -> None:
    rng = np.random.default_rng(3)
    hu = rng.integers(-100, 100, size=(6, 40, 40)).astype(np.int16)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[1:5, 10:30, 5:25] = 1  # 1600 voxels
    labels[0:6, 0:40, 30:40] = 1  # and 2400 more: 4000 voxels of 0.5 uL, 2.0 mL
    labels[2:4, 0:4, 0:4] = 2  # 32 voxels, 0.016 mL: under min_volume_ml (1 mL), so not found
    found = segmentation_findings(segmenter, _volume(hu), labels)

    bone, air = _by_key(found.coded_findings)["bone"], _by_key(found.coded_findings)["air"]
    voxels = hu[labels == 1].astype(np.float64)
    assert bone.value == codes.PRESENT and bone.code.code == "272673000" and bone.body_site == bone.code
    measured = {c.code.display: (c.quantity, c.unit.code, c.decimals) for c in bone.components}
    assert measured == {
        "Volume": (pytest.approx(4000 * 0.5 / 1000.0), "mL", 1),
        "Mean": (pytest.approx(voxels.mean()), "[hnsf'U]", 0),
        "Standard Deviation": (pytest.approx(voxels.std()), "[hnsf'U]", 0),
    }
    assert air.value == codes.ABSENT and air.components == ()  # no number for what was not found
    assert found.conclusion == (
        "Toy segmenter (test fixture): Bone structure 2.0 mL; Air-like region not found (under 1 mL)."
    )
    assert found.measurements == () and found.conclusion_codes == ()  # a measurement, not a diagnosis
    assert found.key_image_png.startswith(b"\x89PNG") and "most segmented voxels" in found.key_image_title


def test_a_label_value_the_manifest_does_not_declare_charts_nothing(segmenter: ModelManifest) -> None:
    hu = np.zeros((2, 8, 8), dtype=np.int16)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[0, 0, 0] = 7
    with pytest.raises(ModelConfigurationError, match=r"study 1\.2\.3: label values \[7\] are not in the manifest"):
        segmentation_findings(segmenter, _volume(hu), labels)
    with pytest.raises(ModelConfigurationError, match="one label per voxel, shape"):
        segmentation_findings(segmenter, _volume(hu), labels[:1])
    with pytest.raises(ModelConfigurationError, match="a label map of integers was expected"):
        segmentation_findings(segmenter, _volume(hu), labels.astype(np.float32))


def test_a_series_with_nothing_segmented_still_gets_a_report_saying_so(segmenter: ModelManifest) -> None:
    hu = np.zeros((3, 8, 8), dtype=np.int16)
    found = segmentation_findings(segmenter, _volume(hu), np.zeros(hu.shape, dtype=np.uint8))
    assert [f.value for f in found.coded_findings] == [codes.ABSENT, codes.ABSENT]
    assert "nothing segmented" in found.key_image_title


def test_the_manifest_and_the_coding_table_name_the_same_measurements() -> None:
    assert set(REGION_MEASUREMENTS) == set(codes.REGION_MEASURES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("- value: 2", "- value: 1"), "each value once"),
        (("key: air", "key: bone"), "each key once"),
        (("key: air", "key: Air Region"), "lower-case letters, digits"),
        (("measurements: [volume]", "measurements: [volume, median]"), r"each once, from .*got \['volume', 'median'\]"),
        (("measurements: [volume]", "measurements: [volume, volume]"), "each once"),
        (("- value: 1", "- value: 0"), "0 is background"),
        (("- value: 1", "- value: 70000"), "1 to 65535"),
        (("datatype: UINT8}", "datatype: FP32}"), "label map, so triton.output.datatype"),
        (("min_volume_ml: 1.0", "min_volume_ml: -1"), "0 or more"),
    ],
)
def test_a_wrong_segmentation_section_is_refused_naming_the_field(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    folder = write_toy_segmenter(tmp_path)
    manifest = folder / "manifest.yaml"
    text = manifest.read_text()
    assert change[0] in text
    manifest.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(ManifestError, match=message):
        load_manifest(folder)


def test_models_check_accepts_the_segmenter_and_refuses_a_label_map_of_another_shape(tmp_path: Path) -> None:
    folder = write_toy_segmenter(tmp_path)
    assert check_model(folder).problems == ()
    config = folder / "config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ -1, -1 ]\n  }\n]\ndynamic", "dims: [ 4 ]\n  }\n]\ndynamic"))
    problems = check_model(folder).problems
    assert any("one label per input voxel" in p for p in problems), problems


def test_classification_and_segmentation_are_not_one_model(tmp_path: Path) -> None:
    folder = write_toy_model(tmp_path)
    manifest = folder / "manifest.yaml"
    manifest.write_text(
        manifest.read_text()
        + "segmentation:\n  labels:\n    - {value: 1, key: x, site: {system: s, code: c, display: d}}\n"
    )
    with pytest.raises(ManifestError, match="cannot be combined with preprocessing"):
        load_manifest(folder)


def test_the_segmenter_runs_on_a_sample_study_with_no_code_of_its_own(tmp_path: Path) -> None:
    """The embedded path (what `imaging-cds analyze --model-repository DIR --model toy-segmenter` runs): local
    onnxruntime on the folder's model, findings from the manifest, a valid FHIR bundle. The expected numbers are
    computed here from the same phantom with numpy."""
    folder = write_toy_segmenter(tmp_path / "repo")
    model = load_manifest(folder)
    sample = write_sample_study(tmp_path / "study", seed=2, n_slices=64)
    result = analyze_folder(sample.study_dir, tmp_path / "out", [model], LocalOnnxBackend())

    hu, _labels, spacing = make_chest_ct(seed=2, n_slices=64)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    bone = hu[hu > SEGMENTER_BONE_HU].astype(np.float64)
    air_ml = int((hu < SEGMENTER_AIR_HU).sum()) * voxel_ml
    found = _by_key(result.analysis.findings.coded_findings)
    bone_components = {c.code.display: c.quantity for c in found["bone"].components}
    assert bone_components["Volume"] == pytest.approx(bone.size * voxel_ml)
    assert bone_components["Mean"] == pytest.approx(bone.mean())
    assert bone_components["Standard Deviation"] == pytest.approx(bone.std())
    assert [c.quantity for c in found["air"].components] == [pytest.approx(air_ml)]

    bundle = json.loads(result.bundle_path.read_text())
    observations = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert_valid_r4([e["resource"] for e in bundle["entry"]])
    bone_obs = next(o for o in observations if o["code"]["coding"][0]["code"] == "272673000")
    assert bone_obs["bodySite"]["coding"][0]["display"] == "Bone structure"
    assert bone_obs["valueCodeableConcept"]["coding"][0]["display"] == "Present"
    volume = next(c for c in bone_obs["component"] if c["code"]["coding"][0]["code"] == "118565006")
    assert volume["valueQuantity"] == {
        "value": round(bone.size * voxel_ml, 1),
        "unit": "mL",
        "system": "http://unitsofmeasure.org",
        "code": "mL",
    }


def test_a_manifest_without_a_segmentation_section_is_refused_by_the_analyzer(segmenter: ModelManifest) -> None:
    hu = np.zeros((1, 2, 2), dtype=np.int16)
    with pytest.raises(ModelConfigurationError, match="no segmentation section"):
        segmentation_findings(replace(segmenter, segmentation=None), _volume(hu), np.zeros(hu.shape, np.uint8))


def test_with_a_radiomics_section_each_structure_found_gets_its_ibsi_features(tmp_path: Path) -> None:
    folder = write_toy_segmenter(tmp_path)
    manifest = folder / "manifest.yaml"
    manifest.write_text(manifest.read_text() + "radiomics:\n  preset: A\n  families: [statistics]\n")
    model = load_manifest(folder)
    hu = np.random.default_rng(5).integers(-50, 50, size=(8, 30, 30)).astype(np.int16)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[:, 5:25, 5:25] = 1  # 3200 voxels, 1.6 mL; no air: one region only
    found = segmentation_findings(model, _volume(hu), labels)
    (region,) = found.radiomics
    assert region.key == "radiomics-bone" and region.region.code == "272673000"
    mean = next(f.value for f in region.features if f.code.code == "Q4LE")  # IBSI: intensity mean
    assert mean == pytest.approx(hu[labels == 1].mean())
