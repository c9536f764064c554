"""What the texture families share: the grey-level image, neighbourhood directions, aggregation over slices and
directions, and the features of sparse (grey level, size) matrices such as run lengths and zone sizes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from imaging_cds.analysis.radiomics.features import (
    Aggregation,
    directional_aggregation,
    feature_key,
    undirected_aggregation,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# One of each pair of opposite neighbour directions (dz, dy, dx), Chebyshev distance 1.
DIRECTIONS_3D: tuple[tuple[int, int, int], ...] = tuple(
    (dz, dy, dx) for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dz, dy, dx) > (0, 0, 0)
)
DIRECTIONS_2D: tuple[tuple[int, int, int], ...] = tuple(d for d in DIRECTIONS_3D if d[0] == 0)


@dataclass(frozen=True)
class GreyImage:
    """Grey levels ``1..n_levels`` in the intensity mask and 0 outside; ``(z, y, x)``, padded by one empty voxel.

    ``roi`` is the ROI before re-segmentation (the morphological mask) on the same grid: zone distances run to
    its edge, so voxels that re-segmentation removed inside a tumour do not count as edges.
    """

    levels: IntArray
    n_levels: int
    roi: npt.NDArray[np.bool_]

    @classmethod
    def from_levels(
        cls,
        levels: IntArray,
        mask: npt.NDArray[np.bool_],
        roi: npt.NDArray[np.bool_] | None = None,
        n_levels: int | None = None,
    ) -> GreyImage:
        outer = mask if roi is None else (roi | mask)
        idx = np.argwhere(outer)
        lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        grid = np.where(mask[box], levels[box], 0).astype(np.int64)
        ng = int(grid.max()) if n_levels is None else n_levels
        return cls(np.pad(grid, 1), ng, np.pad(outer[box], 1))

    @property
    def mask(self) -> npt.NDArray[np.bool_]:
        return self.levels > 0


def neighbour_view(a: IntArray, d: tuple[int, int, int]) -> IntArray:
    """``a`` shifted so that element ``p`` of the result is ``a[p + d]``, over the padded array's interior."""
    z, y, x = a.shape
    return a[1 + d[0] : z - 1 + d[0], 1 + d[1] : y - 1 + d[1], 1 + d[2] : x - 1 + d[2]]


def interior(a: IntArray) -> IntArray:
    return neighbour_view(a, (0, 0, 0))


def mean_over_batches(feats: dict[str, FloatArray], valid: npt.NDArray[np.bool_]) -> dict[str, float]:
    """Average each feature over the batches (slices, directions) that have a matrix."""
    if not valid.any():
        return {k: math.nan for k in feats}
    return {k: float(np.mean(v[valid])) for k, v in feats.items()}


def directional_batches(dims: str, n_dirs: int, n_slices: int) -> list[tuple[Aggregation, IntArray, int]]:
    """For directional matrices indexed by (direction, slice): how each aggregation groups them.

    Returns (aggregation, batch index per (direction * n_slices + slice), number of batches); for 3D, n_slices is 1.
    """
    d = np.repeat(np.arange(n_dirs), n_slices)
    z = np.tile(np.arange(n_slices), n_dirs)
    if dims == "2D":
        return [
            (directional_aggregation("2D", "avg"), d * n_slices + z, n_dirs * n_slices),
            (directional_aggregation("2D", "mrg"), z, n_slices),
        ]
    if dims == "2.5D":
        return [
            (directional_aggregation("2.5D", "avg"), d, n_dirs),
            (directional_aggregation("2.5D", "mrg"), np.zeros_like(d), 1),
        ]
    return [
        (directional_aggregation("3D", "avg"), d, n_dirs),
        (directional_aggregation("3D", "mrg"), np.zeros_like(d), 1),
    ]


def keyed(ids: Sequence[str], names: Sequence[str], values: dict[str, float], agg: Aggregation) -> dict[str, float]:
    return {feature_key(i, agg): values[n] for i, n in zip(ids, names, strict=True)}


def undirected(dims: str) -> Aggregation:
    return undirected_aggregation(dims)


SIZE_FEATURES = (
    "short", "long", "low", "high", "short_low", "short_high", "long_low", "long_high",
    "glnu", "glnu_n", "jnu", "jnu_n", "percentage", "grey_var", "j_var", "entropy", "energy",
)  # fmt: skip


def size_matrix_features(
    batch: IntArray, grey: IntArray, size: IntArray, count: FloatArray, n_batches: int, n_voxels: FloatArray
) -> tuple[dict[str, FloatArray], npt.NDArray[np.bool_]]:
    """Features of matrices M_b[i, j] given sparsely as entries (batch, grey level i, size j, count).

    ``size`` is a run length, zone size, zone distance or dependence count. Returns per-batch feature arrays
    (named as in ``SIZE_FEATURES``: short/long = small/large j emphasis, low/high = low/high grey level
    emphasis, jnu = size non-uniformity, ...) and which batches have any entry.
    """
    nb = n_batches
    if grey.size == 0:
        return {k: np.full(nb, math.nan) for k in SIZE_FEATURES}, np.zeros(nb, dtype=bool)
    jmax = int(size.max()) + 1
    imax = int(grey.max()) + 1
    cell = (batch * imax + grey) * jmax + size
    uniq, inv = np.unique(cell, return_inverse=True)
    w = np.bincount(inv, weights=count)
    b = uniq // (imax * jmax)
    i = ((uniq // jmax) % imax).astype(np.float64)
    j = (uniq % jmax).astype(np.float64)
    ns = np.bincount(b, weights=w, minlength=nb)
    valid = ns > 0
    nsafe = np.where(valid, ns, 1.0)
    p = w / nsafe[b]

    def bsum(x: FloatArray) -> FloatArray:
        return np.bincount(b, weights=x, minlength=nb).astype(np.float64)

    out: dict[str, FloatArray] = {
        "short": bsum(p / j**2),
        "long": bsum(p * j**2),
        "low": bsum(p / i**2),
        "high": bsum(p * i**2),
        "short_low": bsum(p / (i**2 * j**2)),
        "short_high": bsum(p * i**2 / j**2),
        "long_low": bsum(p * j**2 / i**2),
        "long_high": bsum(p * i**2 * j**2),
    }
    gi = b * imax + i.astype(np.int64)
    per_grey = np.bincount(gi, weights=w, minlength=nb * imax).reshape(nb, imax)
    gj = b * jmax + j.astype(np.int64)
    per_size = np.bincount(gj, weights=w, minlength=nb * jmax).reshape(nb, jmax)
    out["glnu"] = (per_grey**2).sum(axis=1) / nsafe
    out["glnu_n"] = (per_grey**2).sum(axis=1) / nsafe**2
    out["jnu"] = (per_size**2).sum(axis=1) / nsafe
    out["jnu_n"] = (per_size**2).sum(axis=1) / nsafe**2
    out["percentage"] = ns / np.where(n_voxels > 0, n_voxels, 1.0)
    mu_i = bsum(p * i)
    mu_j = bsum(p * j)
    out["grey_var"] = bsum(p * (i - mu_i[b]) ** 2)
    out["j_var"] = bsum(p * (j - mu_j[b]) ** 2)
    out["entropy"] = -bsum(p * np.log2(p))
    out["energy"] = bsum(p**2)
    return out, valid
