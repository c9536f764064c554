"""Nodules of the synthetic chest CT: known size and place, inside the lungs, recorded in ground_truth.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pydicom
import pytest

from imaging_cds.sample.synthetic_ct import (
    LUNG_LABELS,
    NODULE_MARGIN_MM,
    Label,
    Phantom,
    make_chest_phantom,
    write_sample_study,
)

N_SLICES = 64


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_chest_phantom(seed=3, n_slices=N_SLICES, nodules=3)


def _distance_mm(phantom: Phantom, centre_zyx: tuple[float, float, float]) -> np.ndarray:
    shape = phantom.hu.shape
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    dz, dy, dx = phantom.spacing_mm
    return np.sqrt(
        ((zz - centre_zyx[0]) * dz) ** 2 + ((yy - centre_zyx[1]) * dy) ** 2 + ((xx - centre_zyx[2]) * dx) ** 2
    )


def test_nodules_have_the_recorded_size_and_lie_wholly_inside_the_lungs(phantom: Phantom) -> None:
    assert len(phantom.nodules) == 3
    for nodule in phantom.nodules:
        distance = _distance_mm(phantom, nodule.centre_index_zyx)
        labelled = phantom.labels == Label.NODULE
        own = labelled & (distance <= nodule.diameter_mm / 2.0 + 2.0)
        sphere_mm3 = math.pi / 6.0 * nodule.diameter_mm**3
        voxel_mm3 = math.prod(phantom.spacing_mm)
        assert own.sum() * voxel_mm3 == pytest.approx(sphere_mm3, rel=0.25 if nodule.diameter_mm < 6 else 0.12)
        near = distance <= nodule.diameter_mm / 2.0 + NODULE_MARGIN_MM - max(phantom.spacing_mm)
        assert np.isin(phantom.labels[near], LUNG_LABELS).all(), "a nodule must not touch pleura or mediastinum"
        assert 4.0 <= nodule.diameter_mm <= 25.0
        assert nodule.side == ("right" if nodule.centre_lps_mm[0] < 0 else "left")
        if nodule.kind == "solid":
            assert phantom.hu[distance <= nodule.diameter_mm / 2.0 - 1.5].mean() > -150.0


def test_centres_use_the_geometry_the_dicom_files_declare(tmp_path: Path) -> None:
    study = write_sample_study(tmp_path, seed=5, n_slices=32, nodules=2)
    truth = json.loads(study.ground_truth_path.read_text())
    files = sorted(study.study_dir.glob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    second = pydicom.dcmread(files[1], stop_before_pixels=True)
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    z_step = float(second.ImagePositionPatient[2]) - origin[2]
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)

    assert len(truth["nodules"]) == 2
    for nodule in truth["nodules"]:
        k, j, i = nodule["centre_index_zyx"]
        expected = origin + np.array([i * column_mm, j * row_mm, k * z_step])
        assert nodule["centre_lps_mm"] == pytest.approx(expected.tolist(), abs=0.01)
        assert nodule["slice_index"] == round(k)
        assert set(nodule) >= {"diameter_mm", "type", "side", "solid_diameter_mm"}
    assert "nodules" in truth["lung_definition"]


def test_nodules_change_no_voxel_away_from_them() -> None:
    without = make_chest_phantom(seed=2, n_slices=40, nodules=0)
    with_two = make_chest_phantom(seed=2, n_slices=40, nodules=2)

    far = np.ones(without.hu.shape, dtype=bool)
    for nodule in with_two.nodules:
        far &= _distance_mm(with_two, nodule.centre_index_zyx) > nodule.diameter_mm / 2.0 + 2.0
    assert not without.nodules and len(with_two.nodules) == 2
    assert np.array_equal(without.hu[far], with_two.hu[far])
    assert np.array_equal(without.labels[far], with_two.labels[far])


def test_default_study_holds_one_to_three_nodules() -> None:
    counts = {len(make_chest_phantom(seed, n_slices=32).nodules) for seed in (0, 1, 2, 3)}
    assert counts <= {1, 2, 3}
