"""IBSI image processing: crop, interpolation, re-segmentation and discretisation of an image and its ROI.

Arrays are indexed ``(z, y, x)`` (slice, row, column); spacings are ``(z, y, x)`` in mm. 2D means per axial slice
(the ``(y, x)`` plane).

Interpolation aligns grid centres (IBSI 1, section 2.4): along an axis with ``n`` voxels at spacing ``s``, the new
grid has ``ceil(n s / s')`` voxels at spacing ``s'`` and shares the old grid's centre. Only the part of the new grid
around the ROI is computed, so cropping first changes nothing but the time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from imaging_cds.analysis.radiomics.config import INTERPOLATION_ORDER, Discretisation, RadiomicsConfig

__all__ = ["EmptyRoiError", "ProcessedRoi", "discretise", "process"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

# Margin kept around the ROI (mm): the local intensity sphere has a 6.2 mm radius.
_MARGIN_MM = 10.0


class EmptyRoiError(ValueError):
    """The ROI has no voxels (left) after interpolation or re-segmentation; no feature can be computed."""


@dataclass(frozen=True)
class ProcessedRoi:
    """An image cropped around its ROI after interpolation and re-segmentation.

    ``image``: intensities (float64), ``(z, y, x)``, including a margin of image voxels around the ROI.
    ``morph_mask``: the ROI after interpolation (morphology). ``intensity_mask``: the ROI after re-segmentation
    (all intensity and texture features). ``spacing_mm``: ``(z, y, x)``. ``range_min``/``range_max``: the
    re-segmentation range bounds, where set (they anchor fixed-bin-size discretisation).
    """

    image: FloatArray
    morph_mask: BoolArray
    intensity_mask: BoolArray
    spacing_mm: tuple[float, float, float]
    range_min: float | None
    range_max: float | None

    @property
    def values(self) -> FloatArray:
        """Intensities inside the intensity mask, in array order."""
        return self.image[self.intensity_mask]


def process(
    image: npt.ArrayLike, mask: npt.ArrayLike, spacing_mm: tuple[float, float, float], config: RadiomicsConfig
) -> ProcessedRoi:
    """Crop, interpolate and re-segment ``image`` (any real dtype) and ``mask`` (non-zero = ROI), both ``(z, y, x)``."""
    img = np.asarray(image)
    roi = np.asarray(mask) != 0
    if img.shape != roi.shape or img.ndim != 3:
        raise ValueError(f"image {img.shape} and mask {roi.shape} must be 3-D arrays of one shape (z, y, x)")
    if not roi.any():
        raise EmptyRoiError("the ROI mask is empty")
    spacing = tuple(float(s) for s in spacing_mm)
    if config.spacing_mm is None:
        img_c, roi_c = _crop(img, roi, spacing)
        new_img, new_roi, new_spacing = img_c.astype(np.float64), roi_c, spacing
    else:
        target = tuple(s if t is None else float(t) for s, t in zip(spacing, config.spacing_mm, strict=True))
        new_img, roi_f, new_spacing = _interpolate(img, roi, spacing, target, config)
        # Interpolated fractions that should be exactly 0.5 (a voxel midway between two slices) come out as
        # 0.49999999999999994; rounding noise must not decide which voxels are in the ROI.
        new_roi = roi_f >= config.roi_partial_volume - 1e-9
    if config.intensity_rounding:
        step = config.intensity_rounding
        new_img = np.round(new_img / step) * step
    if not new_roi.any():
        raise EmptyRoiError("the ROI has no voxels after interpolation")
    lo, hi = config.resegmentation_range or (None, None)
    intensity_mask = new_roi.copy()
    if lo is not None:
        intensity_mask &= new_img >= lo
    if hi is not None:
        intensity_mask &= new_img <= hi
    if config.outlier_sigma is not None and intensity_mask.any():
        vals = new_img[intensity_mask]
        mu, sd = float(vals.mean()), float(vals.std())
        intensity_mask &= np.abs(new_img - mu) <= config.outlier_sigma * sd
    if not intensity_mask.any():
        raise EmptyRoiError("no ROI voxel is left after re-segmentation")
    return ProcessedRoi(
        image=new_img,
        morph_mask=new_roi,
        intensity_mask=intensity_mask,
        spacing_mm=(float(new_spacing[0]), float(new_spacing[1]), float(new_spacing[2])),
        range_min=lo,
        range_max=hi,
    )


def _bbox(roi: BoolArray) -> list[tuple[int, int]]:
    out = []
    for axis in range(roi.ndim):
        other = tuple(a for a in range(roi.ndim) if a != axis)
        idx = np.flatnonzero(roi.any(axis=other))
        out.append((int(idx[0]), int(idx[-1])))
    return out


def _crop(img: npt.NDArray[np.generic], roi: BoolArray, spacing: tuple[float, ...]) -> tuple[FloatArray, BoolArray]:
    sl = []
    for (lo, hi), s, n in zip(_bbox(roi), spacing, roi.shape, strict=True):
        m = math.ceil(_MARGIN_MM / s)
        sl.append(slice(max(lo - m, 0), min(hi + m + 1, n)))
    t = tuple(sl)
    return np.asarray(img[t], dtype=np.float64), roi[t]


def _interpolate(
    img: npt.NDArray[np.generic],
    roi: BoolArray,
    spacing: tuple[float, ...],
    target: tuple[float, ...],
    config: RadiomicsConfig,
) -> tuple[FloatArray, FloatArray, tuple[float, ...]]:
    bbox = _bbox(roi)
    axes_old: list[FloatArray] = []  # new voxel centres in old index units, per axis, around the ROI
    src: list[slice] = []
    for (lo, hi), s, t, n in zip(bbox, spacing, target, img.shape, strict=True):
        n_new = math.ceil(n * s / t - 1e-9)
        start = 0.5 * ((n - 1) * s - (n_new - 1) * t)  # mm offset of new voxel 0 from old voxel 0
        pos = (start + np.arange(n_new) * t) / s  # old index of each new voxel
        keep = (pos >= lo - _MARGIN_MM / s) & (pos <= hi + _MARGIN_MM / s)
        pos = pos[keep]
        # Source crop: the needed old voxels plus room for the interpolator's support.
        a = max(math.floor(pos.min()) - 4, 0)
        b = min(math.ceil(pos.max()) + 5, n)
        src.append(slice(a, b))
        axes_old.append(pos - a)
    sub_img = img[tuple(src)]
    sub_roi = roi[tuple(src)]
    new_img = _resample(sub_img, axes_old, INTERPOLATION_ORDER[config.interpolation])
    new_roi = _resample(sub_roi, axes_old, INTERPOLATION_ORDER[config.roi_interpolation])
    return new_img, new_roi, target


def _resample(a: npt.NDArray[np.generic], positions: list[FloatArray], order: int) -> FloatArray:
    """``a`` sampled at the grid ``positions`` (old index units, per axis), values beyond the edges taken from the
    nearest edge voxel, spline ``order``.

    Linear interpolation on a grid is separable: three 1D passes, the axis that shrinks most first, give what
    trilinear interpolation gives (to rounding) at a fraction of the cost of ``map_coordinates``.
    """
    if order != 1:
        grid = np.meshgrid(*positions, indexing="ij")
        src = np.asarray(a, dtype=np.float64)
        return np.asarray(ndimage.map_coordinates(src, grid, order=order, mode="nearest", prefilter=order > 1))
    out: npt.NDArray[np.generic] = a if a.dtype != np.bool_ else a.view(np.uint8)
    for axis in sorted(range(a.ndim), key=lambda k: positions[k].size / a.shape[k]):
        out = _linear_along(out, positions[axis], axis)
    return np.asarray(out, dtype=np.float64)


def _linear_along(a: npt.NDArray[np.generic], pos: FloatArray, axis: int) -> FloatArray:
    n = a.shape[axis]
    p = np.clip(pos, 0.0, n - 1.0)
    i0 = np.minimum(np.floor(p).astype(np.intp), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    w = p - i0
    shape = [1] * a.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis).astype(np.float64)
    hi = np.take(a, i1, axis=axis).astype(np.float64)
    hi -= lo
    hi *= w
    lo += hi
    return lo


def discretise(values: FloatArray, method: Discretisation, range_min: float | None) -> IntArray:
    """Grey levels (1, 2, ...) for ``values``.

    Fixed bin size ``w``: ``floor((x - x_min) / w) + 1`` with ``x_min`` the re-segmentation range's lower bound,
    or the lowest intensity in the ROI where no range is set. Fixed bin number ``N``: ``floor(N (x - min) /
    (max - min)) + 1``, the maximum going to bin ``N``. ``none``: the intensities are already grey levels (rounded).
    """
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    if method.method == "fbs":
        x_min = float(values.min()) if range_min is None else range_min
        return np.floor((values - x_min) / method.value + 1e-9).astype(np.int64) + 1
    if method.method == "fbn":
        n = int(method.value)
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            return np.ones(values.shape, dtype=np.int64)
        d = np.floor(n * (values - lo) / (hi - lo)).astype(np.int64) + 1
        return np.minimum(d, n)
    return np.round(values).astype(np.int64)
