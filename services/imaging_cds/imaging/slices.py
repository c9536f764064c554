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

HU_MIN, HU_MAX = -1024, 3071  # the int16 HU scale every volume is clipped to


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


def decode_ct_slice(ds: pydicom.Dataset | bytes | bytearray | memoryview, study_uid: str) -> CtSlice:
    """Geometry and HU pixels of one single-frame CT instance; NotAnalyzableError when it is not a usable CT image.

    The same conversion as the streaming path (``imaging.decode``), for one image: rescale applied, padding set
    to -1024 HU, values clipped to [-1024, 3071].
    """
    from imaging_cds.imaging.decode import SeriesDecoder
    from imaging_cds.imaging.volume import VolumeBuilder

    builder = VolumeBuilder(study_uid, "", 1)
    decoder = SeriesDecoder(builder)
    decoder.add(ds)
    decoder.close()
    if builder.reserved != 1 or builder.buffer is None:
        raise NotAnalyzableError(study_uid, f"expected one image, found {builder.reserved}")
    facts = builder.facts(0)
    return CtSlice(
        sop_uid=facts.key,
        position_lps_mm=facts.position_lps_mm,
        orientation=facts.orientation,
        pixel_spacing_mm=facts.pixel_spacing_mm,
        hu=builder.buffer[0].copy(),
    )
