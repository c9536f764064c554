"""Reading a region for radiomics from disk: an image (DICOM series folder or NIfTI) and its mask (DICOM SEG,
RTSTRUCT or NIfTI), on one voxel grid.

Everything returned is indexed ``(z, y, x)`` (slice, row, column) with spacing ``(z, y, x)`` in mm. DICOM slices
are sorted along the slice normal; NIfTI arrays (stored ``(i, j, k)``) are transposed to ``(k, j, i)``, so image
and mask from NIfTI files line up with each other, not necessarily with a DICOM reading of the same scan.

RTSTRUCT contours are rasterised slice by slice: a voxel is in the ROI when its centre lies inside an odd number
of the slice's contours (so inner contours cut holes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from skimage.draw import polygon as fill_polygon

__all__ = ["ImageVolume", "MaskError", "load_image", "load_mask"]

_RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
_SEG = "1.2.840.10008.5.1.4.1.1.66.4"


class MaskError(ValueError):
    """The image or mask cannot be read, or they do not describe the same voxels; the message says which."""


@dataclass(frozen=True)
class ImageVolume:
    """``array``: intensities (float64, rescale applied), ``(z, y, x)``; ``spacing_mm``: ``(z, y, x)``.

    For DICOM, ``origin_lps_mm`` is the first slice's ImagePositionPatient, ``row_cosines``/``column_cosines``
    the directions of increasing column and row index, and ``normal`` the direction of increasing slice index.
    ``affine`` is the NIfTI affine for NIfTI images (``None`` for DICOM).
    """

    array: npt.NDArray[np.float64]
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: npt.NDArray[np.float64]
    row_cosines: npt.NDArray[np.float64]
    column_cosines: npt.NDArray[np.float64]
    normal: npt.NDArray[np.float64]
    slice_positions: npt.NDArray[np.float64]  # along ``normal``, mm, ascending
    affine: npt.NDArray[np.float64] | None = None
    modality: str = ""

    @property
    def intensity_unit(self) -> str:
        return "[hnsf'U]" if self.modality == "CT" else "1"


def _is_nifti(path: Path) -> bool:
    return path.is_file() and (path.name.endswith(".nii") or path.name.endswith(".nii.gz"))


def load_image(path: Path) -> ImageVolume:
    """A DICOM series (a folder of single-frame images of one series) or a NIfTI file."""
    if _is_nifti(path):
        return _load_nifti_image(path)
    if not path.is_dir():
        raise MaskError(f"{path}: expected a DICOM series folder or a .nii/.nii.gz file")
    slices = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f)
        except pydicom.errors.InvalidDicomError:
            continue
        if "PixelData" in ds and "ImagePositionPatient" in ds and str(ds.get("SOPClassUID", "")) not in (_SEG,):
            slices.append(ds)
    if not slices:
        raise MaskError(f"{path}: no DICOM images with pixel data and geometry")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in slices}
    if len(series) > 1:
        raise MaskError(f"{path}: images from {len(series)} series; give a folder with one series")
    first = slices[0]
    orient = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_cos, col_cos = orient[:3], orient[3:]
    normal = np.cross(row_cos, col_cos)
    slices.sort(key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], normal)))
    positions = np.asarray([np.dot([float(v) for v in ds.ImagePositionPatient], normal) for ds in slices])
    gaps = np.diff(positions)
    if len(gaps) and (np.any(gaps < 1e-3) or np.ptp(gaps) > 0.05 * float(np.median(gaps))):
        raise MaskError(f"{path}: slices are not evenly spaced (gaps {gaps.min():.2f}-{gaps.max():.2f} mm)")
    arrays = []
    for ds in slices:
        px = ds.pixel_array.astype(np.float64)
        arrays.append(px * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0))
    ps = [float(v) for v in first.PixelSpacing]
    dz = float(np.median(gaps)) if len(gaps) else float(first.get("SliceThickness", 1.0) or 1.0)
    return ImageVolume(
        array=np.stack(arrays),
        spacing_mm=(dz, ps[0], ps[1]),
        origin_lps_mm=np.asarray([float(v) for v in slices[0].ImagePositionPatient]),
        row_cosines=row_cos,
        column_cosines=col_cos,
        normal=normal,
        slice_positions=positions,
        modality=str(first.get("Modality", "")),
    )


def _load_nifti_image(path: Path) -> ImageVolume:
    import nibabel as nib

    img: Any = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.float64)
    if data.ndim != 3:
        raise MaskError(f"{path}: expected a 3-D image, found shape {data.shape}")
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    affine = np.asarray(img.affine, dtype=np.float64)
    return ImageVolume(
        array=np.ascontiguousarray(data.transpose(2, 1, 0)),
        spacing_mm=(zooms[2], zooms[1], zooms[0]),
        origin_lps_mm=affine[:3, 3] * np.array([-1.0, -1.0, 1.0]),
        row_cosines=np.array([1.0, 0.0, 0.0]),
        column_cosines=np.array([0.0, 1.0, 0.0]),
        normal=np.array([0.0, 0.0, 1.0]),
        slice_positions=np.arange(data.shape[2]) * zooms[2],
        affine=affine,
    )


def load_mask(path: Path, image: ImageVolume, roi: str | None = None) -> npt.NDArray[np.bool_]:
    """The ROI of ``path`` on ``image``'s grid: a NIfTI mask (non-zero voxels, or label ``roi``), an RTSTRUCT
    (structure named ``roi``; the only one when not given) or a DICOM SEG (segment labelled or numbered ``roi``)."""
    if _is_nifti(path):
        return _nifti_mask(path, image, roi)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except pydicom.errors.InvalidDicomError:
            continue
        sop = str(ds.get("SOPClassUID", ""))
        if sop == _RTSTRUCT or ds.get("Modality") == "RTSTRUCT":
            return rasterise_rtstruct(ds, image, roi)
        if sop == _SEG or ds.get("Modality") == "SEG":
            return seg_mask(ds, image, roi)
    raise MaskError(f"{path}: no RTSTRUCT, DICOM SEG or NIfTI mask found")


def _nifti_mask(path: Path, image: ImageVolume, roi: str | None) -> npt.NDArray[np.bool_]:
    import nibabel as nib

    img: Any = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    arr = data.transpose(2, 1, 0)
    if arr.shape != image.array.shape:
        raise MaskError(f"{path}: mask shape {arr.shape} differs from the image's {image.array.shape} (z, y, x)")
    if image.affine is not None and not np.allclose(np.asarray(img.affine), image.affine, atol=1e-3):
        raise MaskError(f"{path}: mask and image NIfTI affines differ; they do not cover the same voxels")
    if roi is not None:
        return np.asarray(arr == float(roi))
    return np.asarray(arr != 0)


def _slice_index(image: ImageVolume, position: float, where: str) -> int:
    k = int(np.argmin(np.abs(image.slice_positions - position)))
    tol = 0.5 * image.spacing_mm[0] if len(image.slice_positions) > 1 else 1.0
    if abs(image.slice_positions[k] - position) > tol:
        raise MaskError(f"{where} lies {position:.2f} mm along the slice normal, on no image slice")
    return k


def rasterise_rtstruct(ds: pydicom.Dataset, image: ImageVolume, roi: str | None) -> npt.NDArray[np.bool_]:
    if image.affine is not None:
        raise MaskError("an RTSTRUCT needs the DICOM image series it was drawn on, not a NIfTI image")
    names = {str(int(r.ROINumber)): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    if roi is None:
        if len(names) != 1:
            raise MaskError(f"the RTSTRUCT has {len(names)} structures ({', '.join(names.values())}); name one")
        number = next(iter(names))
    else:
        found = [n for n, name in names.items() if name == roi]
        if not found:
            raise MaskError(f"no structure named {roi!r} in the RTSTRUCT (it has {', '.join(names.values())})")
        number = found[0]
    contours = [
        c
        for rc in ds.get("ROIContourSequence", [])
        if str(int(rc.ReferencedROINumber)) == number
        for c in rc.get("ContourSequence", [])
    ]
    mask = np.zeros(image.array.shape, dtype=bool)
    _, sy, sx = image.spacing_mm
    for c in contours:
        pts = np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3)
        if len(pts) < 3:
            continue
        k = _slice_index(image, float(np.mean(pts @ image.normal)), f"structure {names[number]!r}: a contour")
        origin = image.origin_lps_mm + (image.slice_positions[k] - image.slice_positions[0]) * image.normal
        rel = pts - origin
        cols = rel @ image.row_cosines / sx
        rows = rel @ image.column_cosines / sy
        rr, cc = fill_polygon(rows, cols, shape=mask.shape[1:])  # type: ignore[no-untyped-call]
        filled = np.zeros(mask.shape[1:], dtype=bool)
        filled[rr, cc] = True
        mask[k] ^= filled
    if not mask.any():
        raise MaskError(f"structure {names[number]!r} covers no voxel of the image")
    return mask


def _plane_position(fg: pydicom.Dataset, shared: pydicom.Dataset | None) -> pydicom.Dataset:
    for group in (fg, shared):
        if group is not None and "PlanePositionSequence" in group:
            position: pydicom.Dataset = group.PlanePositionSequence[0]
            return position
    raise MaskError("a SEG frame has no PlanePositionSequence; cannot place it on the image")


def seg_mask(ds: pydicom.Dataset, image: ImageVolume, roi: str | None) -> npt.NDArray[np.bool_]:
    """The segment labelled or numbered ``roi`` (the only one when not given) of a DICOM SEG, on ``image``'s grid.

    BINARY, FRACTIONAL (at least half the maximum fractional value) and LABELMAP segmentations; frames are placed
    on image slices by their ImagePositionPatient, and must have the image's rows and columns.
    """
    if image.affine is not None:
        raise MaskError("a DICOM SEG needs the DICOM image series it was drawn on, not a NIfTI image")
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])}
    if roi is None:
        if len(segments) != 1:
            raise MaskError(f"the SEG has {len(segments)} segments ({', '.join(segments.values())}); name one")
        number = next(iter(segments))
    else:
        found = [n for n, label in segments.items() if label == roi or str(n) == roi]
        if not found:
            raise MaskError(f"no segment labelled {roi!r} in the SEG (it has {', '.join(segments.values())})")
        number = found[0]
    frames = ds.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    if frames.shape[1:] != image.array.shape[1:]:
        raise MaskError(f"SEG frames are {frames.shape[1:]}, the image slices {image.array.shape[1:]}")
    mask = np.zeros(image.array.shape, dtype=bool)
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    if shared is not None and "PlaneOrientationSequence" in shared:
        orient = np.asarray([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
        if not np.allclose(orient, np.concatenate([image.row_cosines, image.column_cosines]), atol=1e-3):
            raise MaskError("the SEG frames are oriented differently from the image slices")
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    for i, fg in enumerate(ds.PerFrameFunctionalGroupsSequence):
        if seg_type == "LABELMAP":
            # One frame per position holds every segment: the pixel value is the segment number.
            in_segment = frames[i] == number
        else:
            seg_id = fg.SegmentIdentificationSequence[0] if "SegmentIdentificationSequence" in fg else None
            if seg_id is None and shared is not None and "SegmentIdentificationSequence" in shared:
                seg_id = shared.SegmentIdentificationSequence[0]
            if seg_id is None or int(seg_id.ReferencedSegmentNumber) != number:
                continue
            if seg_type == "FRACTIONAL":
                # Probability or occupancy scaled to MaximumFractionalValue: in the ROI from one half up.
                in_segment = frames[i] >= 0.5 * float(ds.get("MaximumFractionalValue", 255))
            else:
                in_segment = frames[i] > 0
        pos = np.asarray([float(v) for v in _plane_position(fg, shared).ImagePositionPatient])
        k = _slice_index(image, float(pos @ image.normal), f"SEG frame {i + 1}")
        offset = pos - (image.origin_lps_mm + (image.slice_positions[k] - image.slice_positions[0]) * image.normal)
        _, sy, sx = image.spacing_mm
        if abs(float(offset @ image.row_cosines)) > 0.5 * sx or abs(float(offset @ image.column_cosines)) > 0.5 * sy:
            raise MaskError(f"SEG frame {i + 1} is shifted in-plane against the image slice it lies on")
        mask[k] |= in_segment
    if not mask.any():
        raise MaskError(f"segment {roi or number} covers no voxel of the image")
    return mask
