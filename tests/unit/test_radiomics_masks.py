"""``imaging-cds radiomics IMAGE MASK --json`` end to end for every kind of mask: DICOM SEG, RTSTRUCT, NIfTI.

The SEG files are written by highdicom (an independent, standard-conformant writer) from a known mask, on a small
synthetic CT series written here with pydicom, so these tests need no shared data; where ``shared/ibsi`` is present
the IBSI CT phantom's GTV is also carried through a SEG and compared with the same region read from its RTSTRUCT and
from NIfTI.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from imaging_cds.analysis.radiomics import IBSI_CONFIGURATIONS, extract
from imaging_cds.analysis.radiomics.io import MaskError, load_image, load_mask, seg_mask
from imaging_cds.cli import main

hd = pytest.importorskip("highdicom")

REPO = Path(__file__).resolve().parents[2]
IBSI = Path(os.environ.get("IMAGING_CDS_IBSI_DATA", REPO.parent / "shared" / "ibsi"))
CT = IBSI / "ct_phantom"
needs_ct = pytest.mark.skipif(not CT.is_dir(), reason=f"IBSI CT phantom not at {CT}")

# A small CT: 10 slices of 24 x 28 pixels, 2.5 mm apart, written from the feet up (slice z increasing with the
# file order reversed against the array order, as scanners often do), 0.8 x 0.9 mm pixels.
SHAPE = (10, 24, 28)
SPACING = (2.5, 0.8, 0.9)  # z, y (rows), x (columns)
FAMILIES = ["morphology", "statistics", "histogram", "glcm", "glszm"]


def _phantom() -> tuple[npt.NDArray[np.int16], dict[str, npt.NDArray[np.bool_]]]:
    rng = np.random.default_rng(3)
    z, y, x = np.indices(SHAPE)
    hu = (rng.normal(40, 25, SHAPE) - 600 * (x < 6)).astype(np.int16)
    lesion = ((z - 4.5) / 3.2) ** 2 + ((y - 11) / 7) ** 2 + ((x - 15) / 8) ** 2 <= 1
    rim = ((z - 5) / 4.5) ** 2 + ((y - 12) / 10) ** 2 + ((x - 14) / 11) ** 2 <= 1
    hu[lesion] += 60
    return hu, {"lesion": lesion, "rim": rim & ~lesion}


def _write_series(folder: Path, hu: npt.NDArray[np.int16]) -> list[Dataset]:
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientName = "Test^Radiomics"
        ds.PatientID = "RAD-1"
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "ACC1", ""
        ds.StudyDate, ds.StudyTime = "20240101", "120000"
        ds.SeriesNumber, ds.InstanceNumber = 1, hu.shape[0] - k
        ds.Manufacturer = "imaging-cds tests"
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-10.0, -8.0, 100.0 + k * SPACING[0]]
        ds.PixelSpacing = [SPACING[1], SPACING[2]]
        ds.SliceThickness = SPACING[0]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = hu[k].astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{hu.shape[0] - k:03d}.dcm", enforce_file_format=True)
        out.append(ds)
    return out  # in array order (increasing z)


def _segment(number: int, label: str) -> Any:
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def _write_seg(
    path: Path, sources: list[Dataset], masks: dict[str, npt.NDArray[np.bool_]], seg_type: str = "BINARY"
) -> Path:
    """A SEG of ``masks`` (one segment each, numbered in order) drawn on ``sources`` (in the masks' slice order)."""
    stack = np.stack([m.astype(np.uint8) for m in masks.values()], axis=-1)  # (frames, rows, columns, segments)
    if seg_type == "LABELMAP":
        pixels: Any = np.zeros(stack.shape[:3], dtype=np.uint8)
        for n in range(stack.shape[-1]):
            pixels[stack[..., n] > 0] = n + 1
    elif seg_type == "FRACTIONAL":
        pixels = stack.astype(np.float32) * 0.75  # occupancy 0.75: in the ROI
        pixels[..., 0][np.roll(stack[..., 0], 1, axis=2) > stack[..., 0]] = 0.25  # a rim at 0.25: outside it
    else:
        pixels = stack
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's notes on the test datasets' person names
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=getattr(hd.seg.SegmentationTypeValues, seg_type),
            segment_descriptions=[_segment(n + 1, label) for n, label in enumerate(masks)],
            series_instance_uid=hd.UID(),
            series_number=99,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="imaging-cds tests",
            manufacturer_model_name="radiomics mask tests",
            software_versions="1",
            device_serial_number="1",
        )
    seg.save_as(path)
    return path


def _cli(*argv: str) -> tuple[int, dict[str, Any] | None]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["radiomics", *argv])
    return code, (json.loads(buf.getvalue()) if code == 0 else None)


def _values(summary: dict[str, Any] | None) -> dict[str, float]:
    assert summary is not None
    return {k: f["value"] for k, f in summary["features"].items()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("radiomics-seg")
    hu, masks = _phantom()
    sources = _write_series(root / "series", hu)
    return {
        "root": root,
        "hu": hu,
        "masks": masks,
        "sources": sources,
        "seg": _write_seg(root / "seg.dcm", sources, masks),
    }


def test_seg_segment_by_label_and_by_number_gives_the_features_of_the_known_mask(synthetic: dict[str, Any]) -> None:
    series, seg = str(synthetic["root"] / "series"), str(synthetic["seg"])
    code, by_label = _cli(series, seg, "--roi", "lesion", "--families", *FAMILIES, "--json")
    assert code == 0
    code, by_number = _cli(series, seg, "--roi", "1", "--families", *FAMILIES, "--json")
    assert code == 0
    config = IBSI_CONFIGURATIONS["C"].with_changes(families=tuple(FAMILIES))
    expected = extract(synthetic["hu"], synthetic["masks"]["lesion"], SPACING, config).values
    assert _values(by_label) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert _values(by_number) == _values(by_label)
    assert by_label is not None
    assert by_label["features"]["Q4LE"]["unit"] == "[hnsf'U]"  # CT: Hounsfield units
    assert by_label["features"]["5QRC.KOBO"]["aggregation"] == "KOBO"
    code, rim = _cli(series, seg, "--roi", "rim", "--spacing", "none", "--families", "morphology", "--json")
    assert code == 0
    assert _values(rim)["YEKZ"] == pytest.approx(synthetic["masks"]["rim"].sum() * np.prod(SPACING))


def test_seg_with_several_segments_needs_roi(synthetic: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    series, seg = str(synthetic["root"] / "series"), str(synthetic["seg"])
    assert main(["radiomics", series, seg, "--json"]) == 2
    assert "the SEG has 2 segments (lesion, rim); name one" in capsys.readouterr().err
    assert main(["radiomics", series, seg, "--roi", "liver"]) == 2
    assert "no segment labelled 'liver'" in capsys.readouterr().err


@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL", "LABELMAP"])
def test_seg_types_read_back_to_the_mask_they_were_written_from(seg_type: str, synthetic: dict[str, Any]) -> None:
    path = _write_seg(synthetic["root"] / f"seg-{seg_type}.dcm", synthetic["sources"], synthetic["masks"], seg_type)
    image = load_image(synthetic["root"] / "series")
    for label, mask in synthetic["masks"].items():
        np.testing.assert_array_equal(load_mask(path, image, label), mask)


def test_seg_on_another_series_geometry_is_refused(synthetic: dict[str, Any]) -> None:
    """A SEG whose frames do not lie on the image's slices is not silently misplaced."""
    image = load_image(synthetic["root"] / "series")
    ds = pydicom.dcmread(synthetic["seg"])
    for fg in ds.PerFrameFunctionalGroupsSequence:
        pos = fg.PlanePositionSequence[0].ImagePositionPatient
        pos[0] = float(pos[0]) + 5.0  # 5 mm to the left: several pixels
    with pytest.raises(MaskError, match="shifted in-plane"):
        seg_mask(ds, image, "lesion")


@needs_ct
def test_ct_phantom_gtv_gives_the_same_features_from_seg_rtstruct_and_nifti(tmp_path: Path) -> None:
    image_dir, rtstruct = CT / "dicom" / "image", CT / "dicom" / "rtstruct"
    image = load_image(image_dir)
    gtv = load_mask(rtstruct, image, "GTV-1")
    sources = sorted(
        (pydicom.dcmread(p) for p in image_dir.iterdir()),
        key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], image.normal)),
    )
    seg = _write_seg(tmp_path / "gtv.dcm", sources, {"GTV-1": gtv})
    options = ["--preset", "C", "--json"]
    code, from_seg = _cli(str(image_dir), str(seg), *options)
    assert code == 0
    code, from_rtstruct = _cli(str(image_dir), str(rtstruct), "--roi", "GTV-1", *options)
    assert code == 0
    code, from_nifti = _cli(str(CT / "nifti" / "image.nii.gz"), str(CT / "nifti" / "mask.nii.gz"), *options)
    assert code == 0
    assert _values(from_seg) == _values(from_rtstruct)
    assert _values(from_nifti) == pytest.approx(_values(from_rtstruct), rel=1e-9, abs=1e-12)
    assert from_seg is not None
    assert from_seg["features"]["Q4LE"]["value"] == pytest.approx(-49.0, abs=2.9)  # IBSI config. C reference
