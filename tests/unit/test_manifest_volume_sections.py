"""The optional manifest sections of volume and detection models: parsed into typed values, refused with the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imaging_cds.inference.manifest import ManifestError, OutputChannel, load_manifest

REPO = Path(__file__).resolve().parents[2]
CAD = REPO / "triton_repo" / "lung-nodule-cad"


def _with(tmp_path: Path, edit: dict[str, Any]) -> Path:
    raw = yaml.safe_load((CAD / "manifest.yaml").read_text())
    for dotted, value in edit.items():
        *parents, leaf = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[leaf] = value
    folder = tmp_path / "lung-nodule-cad"
    folder.mkdir()
    (folder / "manifest.yaml").write_text(yaml.safe_dump(raw))
    return folder


def test_cad_manifest_declares_its_outputs_and_codes() -> None:
    detection = load_manifest(CAD).detection

    assert detection is not None
    assert detection.channels == (OutputChannel("probability", 0.004), OutputChannel("diameter_mm", 0.25, "mm"))
    assert detection.channel("diameter_mm") == 1
    assert [(c.code, c.display) for c in detection.codes] == [
        ("RDES195", "Pulmonary Nodule"),
        ("RID50149", "pulmonary nodule"),
        ("786838002", "Nodule of lung"),
    ]
    assert 0.0 < detection.report_threshold < 1.0 and detection.max_findings == 10


def test_a_segmentation_manifest_has_neither_section() -> None:
    density = load_manifest(REPO / "triton_repo" / "lung-density")

    assert density.preprocessing is None and density.detection is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"preprocessing.sliding_window.overlap": [96, 32, 32]}, "preprocessing.sliding_window.overlap"),
        ({"preprocessing.resample.spacing_mm": [2.0, 2.0]}, "preprocessing.resample.spacing_mm"),
        ({"preprocessing.resample.interpolation": "cubic"}, "interpolation"),
        ({"preprocessing.sliding_window.multiple_of": 5}, "multiple_of"),
        ({"detection.report_threshold": 1.5}, "detection.report_threshold"),
        ({"detection.diameter_mm": [10, 3]}, "detection.diameter_mm"),
        ({"detection.max_findings": 0}, "detection.max_findings"),
    ],
)
def test_malformed_sections_are_refused_naming_the_field(tmp_path: Path, edit: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        load_manifest(_with(tmp_path, edit))


def test_an_unknown_channel_is_named() -> None:
    detection = load_manifest(CAD).detection
    assert detection is not None

    with pytest.raises(ValueError, match=r"probability.*diameter_mm"):
        detection.channel("volume_mm3")
