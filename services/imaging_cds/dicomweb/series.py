"""What is known of a series before its pixels are fetched (QIDO-RS, or the headers of local files)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# A slice normal within ~25 degrees of a patient axis names the plane; beyond that the series is OBLIQUE.
_PLANE_COSINE = 0.9


@dataclass(frozen=True)
class SeriesSummary:
    """Enough to choose a series without downloading it.

    Series-level facts come from QIDO-RS (or the files); ``image_type``, ``slice_thickness_mm``, ``orientation``
    and ``frames_per_instance`` from one representative instance (empty / None when not asked for or unstated).
    """

    series_uid: str
    modality: str
    body_part: str
    description: str
    n_instances: int
    image_type: tuple[str, ...] = ()
    slice_thickness_mm: float | None = None
    orientation: str = ""
    frames_per_instance: int = 1

    @property
    def n_images(self) -> int:
        """Images in the series: instances, or frames for multi-frame (enhanced) instances."""
        return self.n_instances * max(1, self.frames_per_instance)

    def label(self) -> str:
        """A short description for an operator: no patient data (series attributes only)."""
        what = " ".join(p for p in (self.modality or "?", self.body_part) if p)
        desc = f" {self.description!r}" if self.description else ""
        return f"series {self.series_uid} ({what}{desc}, {self.n_images} images)"


def orientation_name(iop: Sequence[float] | None) -> str:
    """AXIAL, CORONAL, SAGITTAL or OBLIQUE from ImageOrientationPatient (row then column cosines, LPS); '' if none."""
    if not iop or len(iop) != 6:
        return ""
    normal = np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return ""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) / norm < _PLANE_COSINE:
        return "OBLIQUE"
    return ("SAGITTAL", "CORONAL", "AXIAL")[axis]


def split_multi_value(value: object) -> tuple[str, ...]:
    """A DICOM multi-valued string (``ORIGINAL\\PRIMARY\\AXIAL`` or a list) as upper-case values."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: list[object] = list(value.split("\\"))
    elif isinstance(value, list | tuple) or hasattr(value, "__iter__"):
        items = list(value)
    else:
        items = [value]
    return tuple(str(v).strip().upper() for v in items if str(v).strip())
