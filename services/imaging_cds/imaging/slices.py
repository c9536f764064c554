"""From DICOM instances to what the pipeline keeps: geometry and HU pixels, nothing that names the patient.

This is where de-identification happens by construction: a ``CtSlice`` holds the instance's UIDs, geometry and
pixels in Hounsfield units, and no other DICOM attribute. Nothing downstream (inference requests, logs, metrics)
ever sees the dataset, so patient name, ID, birth date, institution and the like cannot leak from there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydicom

from imaging_cds.errors import NotAnalyzableError

HU_MIN, HU_MAX = -1024, 3071


@dataclass(frozen=True)
class CtSlice:
    """One axial CT image.

    ``hu`` is int16 Hounsfield units, shape (rows, columns), clipped to [-1024, 3071]. ``position_lps_mm`` is
    ImagePositionPatient (the centre of the first transmitted pixel, LPS, mm); ``orientation`` is
    ImageOrientationPatient (row direction cosines, then column direction cosines); ``pixel_spacing_mm`` is
    (row spacing, column spacing), i.e. (y, x).
    """

    sop_uid: str
    position_lps_mm: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing_mm: tuple[float, float]
    hu: np.ndarray


def decode_ct_slice(ds: pydicom.Dataset, study_uid: str) -> CtSlice:
    """Geometry and HU pixels of one CT instance; NotAnalyzableError when it is not a usable CT image."""
    sop_uid = str(ds.get("SOPInstanceUID", ""))
    where = f"instance {sop_uid or '(no SOP Instance UID)'}"
    if str(ds.get("Modality", "")).upper() != "CT":
        raise NotAnalyzableError(study_uid, f"{where}: modality {ds.get('Modality', 'missing')}, expected CT")
    missing = [
        k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData") if k not in ds
    ]
    if missing:
        raise NotAnalyzableError(study_uid, f"{where}: missing {', '.join(missing)}")
    try:
        stored = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken or undecodable pixel data
        raise NotAnalyzableError(study_uid, f"{where}: pixel data cannot be decoded ({err})") from err
    if stored.ndim != 2:
        raise NotAnalyzableError(study_uid, f"{where}: expected one 2-D frame, found shape {stored.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope == 1.0 and intercept.is_integer():
        hu = stored.astype(np.int32) + int(intercept)
    else:
        hu = np.rint(stored.astype(np.float32) * slope + intercept)
    return CtSlice(
        sop_uid=sop_uid,
        position_lps_mm=_floats(ds.ImagePositionPatient, 3),  # type: ignore[arg-type]
        orientation=_floats(ds.ImageOrientationPatient, 6),  # type: ignore[arg-type]
        pixel_spacing_mm=_floats(ds.PixelSpacing, 2),  # type: ignore[arg-type]
        hu=np.clip(hu, HU_MIN, HU_MAX).astype(np.int16),
    )


def _floats(value: object, n: int) -> tuple[float, ...]:
    items = [float(v) for v in value]  # type: ignore[attr-defined]
    if len(items) != n:
        raise ValueError(f"expected {n} numbers, found {len(items)}")
    return tuple(items)
