"""Volume models: resample a CT to the model's spacing, cut it into overlapping windows, run them, stitch the outputs.

A model whose manifest has a ``preprocessing`` section (:class:`~imaging_cds.inference.manifest.Preprocessing`) sees
the volume, not slices: the worker resamples the HU volume to the declared isotropic spacing (trilinear), optionally
keeps only the in-plane box of the body, and cuts it into windows of at most ``window.size`` voxels that overlap by
``window.overlap`` voxels. Each window's output is kept only over its own share of every overlap (the half nearer
its centre), so each voxel of the resampled volume is written by exactly one window, which saw it with at least half
the overlap of context on every side (a filter whose reach is at most ``overlap / 2`` stitches seamlessly).

Conventions: arrays are ``(z, y, x)`` as in :class:`~imaging_cds.imaging.volume.CtVolume`; model inputs are
``(windows, z, y, x)`` and outputs ``(windows, channels, z, y, x)``. :class:`ResampledGrid` maps a voxel of the
resampled volume back to the CT's index space and to patient coordinates (LPS, mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.backend import InferenceBackend
from imaging_cds.inference.manifest import ModelManifest, Preprocessing, SlidingWindow

__all__ = [
    "ResampledGrid",
    "ResampledOutput",
    "WindowPlan",
    "body_box",
    "infer_volume",
    "plan_axis",
    "plan_windows",
    "resample",
]

_BODY_MARGIN_MM = 10.0
_BODY_SAMPLE = 4  # the body box is found on every 4th slice, row and column


@dataclass(frozen=True)
class ResampledGrid:
    """Where the voxels of a resampled volume lie.

    Resampled voxel ``(k, j, i)`` (z, y, x) sits at source index ``start_index + (k, j, i) * step_index`` of the CT
    volume (fractional, (z, y, x)), which is at ``origin + sum_a direction[a] * index_a * source_spacing_a`` in LPS
    (axes a in (x, y, z) order, as :class:`CtVolume` documents). ``spacing_mm`` is the actual (z, y, x) spacing,
    ``step_index * source_spacing_mm``, within a fraction of a percent of the manifest's.
    """

    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    start_index: tuple[float, float, float]
    step_index: tuple[float, float, float]
    source_spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]

    def source_index(self, zyx: tuple[float, float, float]) -> tuple[float, float, float]:
        """(z, y, x) index of the source CT volume (fractional) of a resampled voxel position."""
        z, y, x = (s + v * d for s, v, d in zip(self.start_index, zyx, self.step_index, strict=True))
        return (z, y, x)

    def lps_mm(self, zyx: tuple[float, float, float]) -> tuple[float, float, float]:
        """Patient coordinates (LPS, mm) of a resampled voxel position (fractional indices allowed)."""
        z, y, x = self.source_index(zyx)
        offset = np.zeros(3)
        for axis_vector, index, spacing in zip(
            self.direction,
            (x, y, z),
            (self.source_spacing_mm[2], self.source_spacing_mm[1], self.source_spacing_mm[0]),
            strict=True,
        ):
            offset += np.asarray(axis_vector, dtype=float) * index * spacing
        lps = np.asarray(self.origin_lps_mm, dtype=float) + offset
        return (float(lps[0]), float(lps[1]), float(lps[2]))


@dataclass(frozen=True)
class ResampledOutput:
    """A volume model's output over a whole series.

    ``output``: ``(channels, z, y, x)`` on ``grid``, the model's dtype and scale (see the manifest's
    ``detection.channels``). ``hu``: the resampled HU the model saw, int16 ``(z, y, x)`` on the same grid.
    ``windows``: how many windows were sent.
    """

    output: np.ndarray
    hu: np.ndarray
    grid: ResampledGrid
    windows: int


@dataclass(frozen=True)
class WindowPlan:
    """One axis of the tiling: window length, where each window starts, and the span each window keeps."""

    length: int
    starts: tuple[int, ...]
    keep: tuple[tuple[int, int], ...]  # [begin, end) in volume coordinates, disjoint, covering [0, n)


def plan_axis(n: int, size: int, overlap: int, multiple_of: int = 1) -> WindowPlan:
    """Windows along one axis of ``n`` voxels: as few as possible of one length <= ``size``, neighbours sharing at
    least ``overlap`` voxels, each keeping its half of every overlap. Lengths and starts are multiples of
    ``multiple_of``, so a model that pools by that factor sees every window on the same grid as the whole volume
    (the stitched output then equals one pass over the volume).

    The last window may reach past ``n`` (and a single one past ``n`` rounded up): the caller pads the volume's end.
    """
    if n < 1 or size < 1 or not 0 <= overlap < size or size % multiple_of:
        raise ValueError(
            f"cannot tile {n} voxels with windows of {size} (a multiple of {multiple_of}) overlapping by {overlap}"
        )
    if n <= size:
        length = math.ceil(n / multiple_of) * multiple_of
        return WindowPlan(length=length, starts=(0,), keep=((0, n),))
    count = math.ceil((n - overlap) / (size - overlap))
    length = math.ceil((n + (count - 1) * overlap) / count)
    length = min(math.ceil(length / multiple_of) * multiple_of, size)
    stride = max((length - overlap) // multiple_of * multiple_of, multiple_of)
    count = math.ceil((n - length) / stride) + 1
    starts = tuple(i * stride for i in range(count))
    bounds = [0, *((starts[i + 1] + starts[i] + length) // 2 for i in range(count - 1)), n]
    keep = tuple((bounds[i], bounds[i + 1]) for i in range(count))
    return WindowPlan(length=length, starts=starts, keep=keep)


def plan_windows(shape: tuple[int, int, int], window: SlidingWindow) -> tuple[WindowPlan, WindowPlan, WindowPlan]:
    """The (z, y, x) tiling of a volume of ``shape``; the windows are the product of the three axes' windows."""
    z, y, x = (
        plan_axis(n, s, o, window.multiple_of) for n, s, o in zip(shape, window.size, window.overlap, strict=True)
    )
    return (z, y, x)


def body_box(hu: np.ndarray, threshold_hu: float, spacing_mm: tuple[float, float, float]) -> tuple[slice, slice]:
    """In-plane (rows, columns) box of the voxels above ``threshold_hu`` in any slice, plus a 10 mm margin.

    The whole plane when nothing is above the threshold (no body: the caller's checks decide what that means).
    """
    s = _BODY_SAMPLE
    projection = np.asarray((hu[::s, ::s, ::s] > threshold_hu).any(axis=0), dtype=bool)
    rows, columns = np.flatnonzero(projection.any(axis=1)), np.flatnonzero(projection.any(axis=0))
    if rows.size == 0:
        return slice(0, hu.shape[1]), slice(0, hu.shape[2])
    margin_y = math.ceil(_BODY_MARGIN_MM / spacing_mm[1]) + s
    margin_x = math.ceil(_BODY_MARGIN_MM / spacing_mm[2]) + s
    return (
        slice(max(int(rows[0]) * s - margin_y, 0), min(int(rows[-1]) * s + margin_y + 1, hu.shape[1])),
        slice(max(int(columns[0]) * s - margin_x, 0), min(int(columns[-1]) * s + margin_x + 1, hu.shape[2])),
    )


def resample(volume: CtVolume, preprocessing: Preprocessing) -> tuple[np.ndarray, ResampledGrid]:
    """The volume's HU on the manifest's grid (trilinear, int16 ``(z, y, x)``) and that grid's geometry.

    Corner voxel centres are kept (``n_out = round((n - 1) * spacing / target) + 1`` per axis), so the actual
    spacing differs from the target by under half a voxel over the whole extent.
    """
    hu = volume.hu
    start = [0, 0, 0]
    if preprocessing.crop_to_body_hu is not None:
        rows, columns = body_box(hu, preprocessing.crop_to_body_hu, volume.spacing_mm)
        hu = hu[:, rows, columns]
        start = [0, rows.start, columns.start]
    shape_in = hu.shape
    shape_out = tuple(
        max(1, round((n - 1) * s / t) + 1)
        for n, s, t in zip(shape_in, volume.spacing_mm, preprocessing.spacing_mm, strict=True)
    )
    step = tuple((n - 1) / (m - 1) if m > 1 else 0.0 for n, m in zip(shape_in, shape_out, strict=True))
    if shape_out == shape_in:
        resampled = np.ascontiguousarray(hu, dtype=np.int16)
    else:
        zoom = [m / n for m, n in zip(shape_out, shape_in, strict=True)]
        resampled = ndimage.zoom(hu, zoom, order=1, grid_mode=False, mode="nearest", output=np.int16)
    grid = ResampledGrid(
        shape=(shape_out[0], shape_out[1], shape_out[2]),
        spacing_mm=(
            step[0] * volume.spacing_mm[0] or preprocessing.spacing_mm[0],
            step[1] * volume.spacing_mm[1] or preprocessing.spacing_mm[1],
            step[2] * volume.spacing_mm[2] or preprocessing.spacing_mm[2],
        ),
        start_index=(float(start[0]), float(start[1]), float(start[2])),
        step_index=(step[0], step[1], step[2]),
        source_spacing_mm=volume.spacing_mm,
        origin_lps_mm=volume.origin_lps_mm,
        direction=volume.direction,
    )
    return resampled, grid


def run_windows(
    hu: np.ndarray, model: ModelManifest, window: SlidingWindow, backend: InferenceBackend
) -> tuple[np.ndarray, int]:
    """Tile ``hu`` (z, y, x), run every window through ``backend`` in batches of at most ``model.max_batch``, and
    stitch: returns ``(output (channels, z, y, x), number of windows)``."""
    plans = plan_windows((hu.shape[0], hu.shape[1], hu.shape[2]), window)
    lengths = tuple(p.length for p in plans)
    pad = [(0, max(0, p.starts[-1] + p.length - n)) for p, n in zip(plans, hu.shape, strict=True)]
    padded = np.pad(hu, pad, mode="edge") if any(after for _, after in pad) else hu
    tiles = [
        (sz, sy, sx, kz, ky, kx)
        for sz, kz in zip(plans[0].starts, plans[0].keep, strict=True)
        for sy, ky in zip(plans[1].starts, plans[1].keep, strict=True)
        for sx, kx in zip(plans[2].starts, plans[2].keep, strict=True)
    ]
    output: np.ndarray | None = None
    step = max(1, model.max_batch)
    for first in range(0, len(tiles), step):
        chunk = tiles[first : first + step]
        batch = np.stack(
            [padded[sz : sz + lengths[0], sy : sy + lengths[1], sx : sx + lengths[2]] for sz, sy, sx, *_ in chunk]
        )
        result = np.asarray(backend.infer(model, batch))
        if result.ndim != 5 or result.shape[0] != len(chunk) or result.shape[2:] != lengths:
            raise ValueError(
                f"{model.name}: expected output (windows={len(chunk)}, channels, {lengths[0]}, {lengths[1]}, "
                f"{lengths[2]}), got {result.shape}"
            )
        if output is None:
            output = np.empty((result.shape[1], *hu.shape), dtype=result.dtype)
        for tile, window_out in zip(chunk, result, strict=True):
            sz, sy, sx, kz, ky, kx = tile
            output[:, kz[0] : kz[1], ky[0] : ky[1], kx[0] : kx[1]] = window_out[
                :, kz[0] - sz : kz[1] - sz, ky[0] - sy : ky[1] - sy, kx[0] - sx : kx[1] - sx
            ]
    assert output is not None  # at least one window: every axis has at least one voxel
    return output, len(tiles)


def infer_volume(volume: CtVolume, model: ModelManifest, backend: InferenceBackend) -> ResampledOutput:
    """Resample ``volume`` as ``model``'s manifest says, run its windows on ``backend``, and stitch the outputs.

    Raises :class:`NotAnalyzableError` (naming the study) when the model declares no preprocessing.
    """
    if model.preprocessing is None:
        raise NotAnalyzableError(
            volume.study_uid,
            f"model {model.name} has no preprocessing section in its manifest; it cannot be run on a volume",
        )
    hu, grid = resample(volume, model.preprocessing)
    output, windows = run_windows(hu, model, model.preprocessing.window, backend)
    return ResampledOutput(output=output, hu=hu, grid=grid, windows=windows)
