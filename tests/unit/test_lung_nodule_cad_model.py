"""The lung-nodule-cad ONNX model: rebuilt byte for byte by its script, its contract, and nodules found end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from imaging_cds.analysis.nodules import detect_nodules
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.check import check_model
from imaging_cds.inference.local import LocalOnnxBackend
from imaging_cds.inference.manifest import load_manifest
from imaging_cds.sample.synthetic_ct import make_chest_phantom, phantom_volume

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "triton_repo" / "lung-nodule-cad"


def test_build_script_reproduces_the_committed_model(rebuilt_models: Path) -> None:
    rebuilt = rebuilt_models / "lung-nodule-cad"
    assert (rebuilt / "1" / "model.onnx").read_bytes() == (MODEL_DIR / "1" / "model.onnx").read_bytes()
    assert (rebuilt / "config.pbtxt").read_text() == (MODEL_DIR / "config.pbtxt").read_text()


def test_model_folder_passes_models_check() -> None:
    result = check_model(MODEL_DIR)

    assert result.ok, result.problems
    config = (MODEL_DIR / "config.pbtxt").read_text()
    assert "priority_levels: 2" in config and "default_priority_level: 2" in config


def test_output_is_probability_and_diameter_no_larger_than_the_input() -> None:
    model = onnx.load(str(MODEL_DIR / "1" / "model.onnx"))
    session = ort.InferenceSession(str(MODEL_DIR / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    hu = np.full((2, 32, 48, 48), -850, dtype=np.int16)
    zz, yy, xx = np.ogrid[:32, :48, :48]
    hu[0][((zz - 16) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2) <= 16] = 40  # a 16 mm ball (radius 4 voxels of 2 mm)
    hu[1][:, ((yy[0] - 24) ** 2 + (xx[0] - 24) ** 2) <= 4] = 40  # an 8 mm vessel along z

    (out,) = session.run(None, {"ct_hu": hu})

    assert model.opset_import[0].version == 17 and model.ir_version <= 10
    assert out.dtype == np.uint8 and out.shape == (2, 2, 32, 48, 48)
    assert out.nbytes <= hu.nbytes
    ball, vessel = out[0, 0].astype(float) / 250.0, out[1, 0].astype(float) / 250.0
    assert ball[16, 24, 24] > 0.9 and 11.0 <= out[0, 1, 16, 24, 24] / 4.0 <= 20.0
    assert vessel[8:24].max() < 0.05, "a tube is not a nodule"
    assert ball[2, 2, 2] < 0.05


def _phantom_volume(seed: int, n_slices: int, nodules: int) -> tuple[CtVolume, list[dict[str, object]]]:
    phantom = make_chest_phantom(seed, n_slices, nodules)
    return phantom_volume(phantom, "1.2.826.0.1.301", "1.2.826.0.1.301.1"), [n.as_json() for n in phantom.nodules]


def test_nodules_of_a_short_phantom_are_found_and_sized() -> None:
    volume, truth = _phantom_volume(seed=301, n_slices=96, nodules=2)  # two solid nodules of 11 and 12 mm
    model = load_manifest(MODEL_DIR)

    found = detect_nodules(volume, model, LocalOnnxBackend(threads=2))

    for nodule in truth:
        centre = np.asarray(nodule["centre_lps_mm"], dtype=float)
        diameter = float(nodule["diameter_mm"])  # type: ignore[arg-type]
        hits = [f for f in found if np.linalg.norm(np.subtract(f.centre_lps_mm, centre)) <= max(diameter / 2, 5.0)]
        assert hits, f"missed the {diameter:.1f} mm nodule at {centre}"
        assert hits[0].diameter_mm == pytest.approx(diameter, rel=0.25)
        assert hits[0].sop_uid == f"sop{95 - hits[0].slice_index}"  # the volume runs feet to head
    assert len(found) - len(truth) <= 2
    assert [f.probability for f in found] == sorted((f.probability for f in found), reverse=True)
