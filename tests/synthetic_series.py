"""Small synthetic CT series for tests: a body with lungs in air, with the defects a real PACS series can have.

Every series carries a patient identity (``PHI``), so privacy tests have something to look for.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PHI = {
    "PatientName": "Testpatient^Series",
    "PatientID": "PHI-424242",
    "PatientBirthDate": "19511231",
    "InstitutionName": "Testing Hospital North",
    "ReferringPhysicianName": "Doctor^Referring",
    "AccessionNumber": "ACC-77331",
}
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class SeriesSpec:
    """What to build: ``n`` slices of ``rows`` x ``columns``, 0.7 mm pixels, ``spacing`` mm apart along the normal."""

    n: int = 24
    rows: int = 48
    columns: int = 48
    spacing: float = 1.25
    orientation: tuple[float, ...] = AXIAL
    pixel_spacing: float = 0.7
    slope: float = 1.0
    intercept: float = -1024.0
    slice_thickness: float | None = 1.25
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    # z positions (mm along the normal); None: n slices `spacing` apart from 0
    positions: Sequence[float] | None = None
    # per-slice overrides, by slice index
    edit: Callable[[int, pydicom.Dataset], None] | None = None
    # the HU image of slice i (rows, columns)
    image: Callable[[int, int, int], np.ndarray] | None = None


def chest_like(i: int, rows: int, columns: int) -> np.ndarray:
    """Air outside an elliptic body (40 HU), two lungs (-850 HU) inside, a marker that grows with the slice index."""
    y, x = np.mgrid[0:rows, 0:columns]
    cy, cx = (rows - 1) / 2, (columns - 1) / 2
    hu = np.full((rows, columns), -1000, dtype=np.int16)
    body = ((y - cy) / (0.45 * rows)) ** 2 + ((x - cx) / (0.45 * columns)) ** 2 <= 1
    hu[body] = 40
    for side in (-1, 1):
        lung = ((y - cy) / (0.3 * rows)) ** 2 + ((x - cx - side * 0.2 * columns) / (0.12 * columns)) ** 2 <= 1
        hu[lung] = -850
    hu[0, 0] = i  # which slice this was (top-left corner, in air)
    hu[0, 1] = 100  # an asymmetric marker: flips show
    return hu


def build_series(spec: SeriesSpec) -> list[pydicom.Dataset]:
    row = np.asarray(spec.orientation[:3], dtype=float)
    col = np.asarray(spec.orientation[3:], dtype=float)
    normal = np.cross(row, col)
    zs = list(spec.positions) if spec.positions is not None else [k * spec.spacing for k in range(spec.n)]
    image = spec.image or chest_like
    datasets = []
    for i, z in enumerate(zs):
        hu = image(i, spec.rows, spec.columns).astype(np.float64)
        stored = np.rint((hu - spec.intercept) / spec.slope)
        position = normal * z - row * 16.45 - col * 16.45
        ds = _instance(spec, i, stored.astype(np.uint16), position)
        if spec.edit is not None:
            spec.edit(i, ds)
        datasets.append(ds)
    return datasets


def _instance(spec: SeriesSpec, i: int, stored: np.ndarray, position: np.ndarray) -> pydicom.Dataset:
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "CHEST"
    ds.SeriesDescription = "Test chest"
    ds.StudyDate = "20240301"
    ds.ContentDate = "20240301"
    ds.StudyTime = "101500"
    for key, value in PHI.items():
        setattr(ds, key, value)
    ds.InstanceNumber = i + 1
    if spec.slice_thickness is not None:
        ds.SliceThickness = f"{spec.slice_thickness:g}"
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:g}" for v in spec.orientation]
    ds.PixelSpacing = [f"{spec.pixel_spacing:g}", f"{spec.pixel_spacing:g}"]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{spec.slope:g}"
    ds.RescaleIntercept = f"{spec.intercept:g}"
    ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def to_bytes(ds: pydicom.Dataset) -> bytes:
    """Part 10 bytes, as a WADO-RS part or a file holds them."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def set_pixels(ds: pydicom.Dataset, stored: np.ndarray) -> None:
    ds.Rows, ds.Columns = stored.shape
    ds.PixelData = stored.astype("<u2").tobytes()
