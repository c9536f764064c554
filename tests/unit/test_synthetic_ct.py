"""The synthetic chest CT: deterministic, valid DICOM, and ground truth that matches the written pixels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from imaging_cds.sample.synthetic_ct import (
    LUNG_LABELS,
    Label,
    SampleStudy,
    ground_truth,
    make_chest_ct,
    write_sample_study,
)

SEED = 1
Phantom = tuple[npt.NDArray[np.int16], npt.NDArray[np.uint8], tuple[float, float, float]]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> SampleStudy:
    return write_sample_study(tmp_path_factory.mktemp("sample"), seed=SEED)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_chest_ct(SEED)


@pytest.fixture(scope="module")
def datasets(written: SampleStudy) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in sorted(written.study_dir.glob("*.dcm"))]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_writes_byte_identical_study(tmp_path: Path) -> None:
    first = write_sample_study(tmp_path / "a", seed=7, n_slices=32)
    second = write_sample_study(tmp_path / "b", seed=7, n_slices=32)

    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert first.study_instance_uid == second.study_instance_uid


def test_different_seeds_give_different_patients_and_pixels() -> None:
    hu_a, _, _ = make_chest_ct(2, n_slices=32)
    hu_b, _, _ = make_chest_ct(3, n_slices=32)

    assert not np.array_equal(hu_a, hu_b)


def test_emphysema_burden_depends_on_the_seed() -> None:
    burdens = []
    for seed in (0, 1, 2, 3):
        hu, labels, spacing = make_chest_ct(seed, n_slices=40)
        burdens.append(ground_truth(hu, labels, spacing)["emphysema_percent_of_lung"])

    assert all(1.0 < b < 17.0 for b in burdens)
    assert max(burdens) - min(burdens) > 3.0


def test_series_is_a_full_resolution_ct_chest(written: SampleStudy, datasets: list[pydicom.Dataset]) -> None:
    assert written.n_instances == len(datasets) >= 200
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert (ds.Rows, ds.Columns) == (512, 512)
        assert ds.Modality == "CT"
        assert ds.BodyPartExamined == "CHEST"
        assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert ds.StudyDescription == "CT CHEST WITHOUT CONTRAST"
        assert ds.RescaleType == "HU"
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
        assert ds.StudyInstanceUID == written.study_instance_uid
        assert ds.SeriesInstanceUID == written.series_instance_uid
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert [int(ds.InstanceNumber) for ds in datasets] == list(range(1, len(datasets) + 1))


def test_geometry_is_consistent_along_the_series(datasets: list[pydicom.Dataset]) -> None:
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    thickness = float(datasets[0].SliceThickness)

    assert thickness == pytest.approx(1.25)
    assert float(datasets[0].SpacingBetweenSlices) == pytest.approx(thickness)
    assert np.allclose(positions[:, :2], positions[0, :2])
    assert np.allclose(np.diff(positions[:, 2]), -thickness)
    for ds in datasets:
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.703125, 0.703125])
        assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))


def test_patient_identity_is_fake_and_distinctive(datasets: list[pydicom.Dataset]) -> None:
    ds = datasets[0]

    assert str(ds.PatientName) == f"Synthetic^Patient^{SEED}"
    assert ds.PatientID == f"SYN-{SEED:05d}"
    assert ds.PatientBirthDate == "19600101"
    assert ds.PatientSex == "O"
    assert ds.InstitutionName == "Synthetic Hospital"
    assert str(ds.ReferringPhysicianName) == "Synthetic^Referrer"
    assert ds.AccessionNumber


def test_ground_truth_matches_the_written_pixels(
    written: SampleStudy, datasets: list[pydicom.Dataset], phantom: Phantom
) -> None:
    stored = np.stack([ds.pixel_array for ds in datasets])
    hu_written = stored.astype(np.int32) * int(datasets[0].RescaleSlope) + int(datasets[0].RescaleIntercept)
    hu, labels, spacing = phantom
    truth = json.loads(written.ground_truth_path.read_text())

    assert np.array_equal(hu_written, hu)
    lung = np.isin(labels, LUNG_LABELS)
    lung_hu = hu_written[lung]
    voxel_ml = float(np.prod(truth["spacing_mm"])) / 1000.0
    assert truth["spacing_mm"] == list(spacing)
    assert truth["lung_volume_ml"] == pytest.approx(lung.sum() * voxel_ml, abs=1e-3)
    assert truth["laa950_percent"] == pytest.approx(100.0 * np.mean(lung_hu < -950), abs=1e-4)
    assert truth["mean_lung_density_hu"] == pytest.approx(lung_hu.mean(), abs=1e-3)
    assert truth["p15_hu"] == pytest.approx(np.percentile(lung_hu, 15), abs=1e-3)
    assert truth["emphysema_volume_ml"] == pytest.approx((labels == Label.EMPHYSEMA).sum() * voxel_ml, abs=1e-3)
    assert (truth["seed"], truth["n_slices"]) == (SEED, len(datasets))


def test_phantom_anatomy_is_plausible(phantom: Phantom) -> None:
    hu, labels, spacing = phantom
    truth = ground_truth(hu, labels, spacing)
    lung = np.isin(labels, LUNG_LABELS)
    parenchyma = hu[labels == Label.LUNG_PARENCHYMA]

    assert 3000.0 < truth["lung_volume_ml"] < 7500.0
    assert -900.0 < parenchyma.mean() < -800.0
    assert hu[labels == Label.AIRWAY].mean() < -950.0
    assert not lung[0].any(), "the first slice is above the lung apices"
    assert (labels[0] == Label.AIRWAY).any(), "the trachea enters from the top of the volume"
    # the right lung (patient right = low x) is larger than the left
    middle = hu.shape[2] // 2
    assert lung[:, :, :middle].sum() > lung[:, :, middle:].sum()
    # dependent (posterior) parenchyma is denser than anterior parenchyma
    rows = np.nonzero(labels == Label.LUNG_PARENCHYMA)[1]
    assert parenchyma[rows > np.median(rows)].mean() > parenchyma[rows <= np.median(rows)].mean() + 10.0


def test_too_few_slices_is_refused() -> None:
    with pytest.raises(ValueError, match="n_slices"):
        make_chest_ct(0, n_slices=8)
