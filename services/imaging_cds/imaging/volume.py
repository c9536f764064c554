"""Assembling CT slices into one volume, with the geometry checks that make measurements trustworthy.

A volume is only as good as its geometry: a missing slice or uneven spacing silently changes every volume in mL.
``assemble_volume`` refuses such series with a NotAnalyzableError that says what it found, rather than report a
wrong number into a patient's chart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.slices import CtSlice

_ORIENTATION_TOL = 1e-3
_SPACING_REL_TOL = 0.05


@dataclass(frozen=True)
class CtVolume:
    """A CT volume in Hounsfield units.

    ``hu``: int16, axis order (z, y, x) = (slice, row, column), slices sorted by position along the slice normal
    (ascending). ``spacing_mm``: (z, y, x) in mm. ``origin_lps_mm``: position of voxel (0, 0, 0), LPS, mm.
    """

    study_uid: str
    series_uid: str
    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    sop_uids: tuple[str, ...]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_mm)) / 1000.0


def assemble_volume(study_uid: str, series_uid: str, slices: list[CtSlice], max_slice_spacing_mm: float) -> CtVolume:
    if not slices:
        raise NotAnalyzableError(study_uid, f"series {series_uid}: no images")
    where = f"series {series_uid}"
    first = slices[0]
    shape = first.hu.shape
    for s in slices:
        if s.hu.shape != shape:
            raise NotAnalyzableError(study_uid, f"{where}: image sizes differ ({shape} and {s.hu.shape})")
        if not np.allclose(s.orientation, first.orientation, atol=_ORIENTATION_TOL):
            raise NotAnalyzableError(study_uid, f"{where}: images do not share one orientation")
        if not np.allclose(s.pixel_spacing_mm, first.pixel_spacing_mm, rtol=1e-4):
            raise NotAnalyzableError(study_uid, f"{where}: pixel spacing differs between images")
    row, col = np.array(first.orientation[:3]), np.array(first.orientation[3:])
    normal = np.cross(row, col)
    if abs(abs(normal[2]) - 1.0) > 0.05:
        raise NotAnalyzableError(study_uid, f"{where}: not an axial acquisition (slice normal {normal.round(3)})")
    ordered = sorted(slices, key=lambda s: float(np.dot(s.position_lps_mm, normal)))
    positions = np.array([np.dot(s.position_lps_mm, normal) for s in ordered])
    gaps = np.diff(positions)
    if len(ordered) > 1:
        _check_spacing(study_uid, where, gaps, max_slice_spacing_mm)
    z_spacing = float(np.median(gaps)) if len(gaps) else 1.0
    return CtVolume(
        study_uid=study_uid,
        series_uid=series_uid,
        hu=np.stack([s.hu for s in ordered]),
        spacing_mm=(z_spacing, first.pixel_spacing_mm[0], first.pixel_spacing_mm[1]),
        origin_lps_mm=ordered[0].position_lps_mm,
        sop_uids=tuple(s.sop_uid for s in ordered),
    )


def _check_spacing(study_uid: str, where: str, gaps: np.ndarray, max_spacing: float) -> None:
    if np.any(gaps < 1e-3):
        raise NotAnalyzableError(study_uid, f"{where}: two images share one slice position (duplicates?)")
    median = float(np.median(gaps))
    if median > max_spacing:
        raise NotAnalyzableError(
            study_uid, f"{where}: slices {median:.2f} mm apart, expected at most {max_spacing:g} mm"
        )
    uneven = np.abs(gaps - median) > _SPACING_REL_TOL * median
    if np.any(uneven):
        worst = float(gaps[np.argmax(np.abs(gaps - median))])
        raise NotAnalyzableError(
            study_uid,
            f"{where}: uneven slice spacing ({int(uneven.sum())} gaps differ from {median:.2f} mm, one is "
            f"{worst:.2f} mm): missing or extra slices; volumes would be wrong",
        )
