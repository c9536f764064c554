"""Grey level size zone matrix features (IBSI 1, 3.8): zones of equal grey level, 26- (3D) or 8-connected (2D)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from imaging_cds.analysis.radiomics.features import GLSZM
from imaging_cds.analysis.radiomics.texture.common import (
    SIZE_FEATURES,
    FloatArray,
    GreyImage,
    IntArray,
    keyed,
    mean_over_batches,
    size_matrix_features,
    undirected,
)

__all__ = ["Zones", "glszm_features", "zones"]

_IDS = [i for i, _ in GLSZM]
_NAMES = [n for n in SIZE_FEATURES if n != "energy"]


class Zones:
    """Connected zones of equal grey level: label image and, per zone, slice, grey level and size."""

    def __init__(self, labels: IntArray, z: IntArray, grey: IntArray, size: IntArray) -> None:
        self.labels = labels  # 0 outside the ROI; zone k has label k + 1
        self.z = z
        self.grey = grey
        self.size = size


def _structure(dims: str) -> np.ndarray:
    s = np.ones((3, 3, 3), dtype=bool)
    if dims != "3D":
        s[0] = False
        s[2] = False
    return s


def zones(grey: GreyImage, dims: str) -> Zones:
    """Zones in 3D, or per slice (2D and 2.5D: zones never cross slices)."""
    g = grey.levels
    labels = np.zeros(g.shape, dtype=np.int64)
    structure = _structure(dims)
    zs, greys = [], []
    n_total = 0
    for level in np.unique(g[g > 0]):
        lab, n = ndimage.label(g == level, structure=structure)
        if n == 0:
            continue
        sel = lab > 0
        labels[sel] = lab[sel] + n_total
        greys.append(np.full(n, level, dtype=np.int64))
        n_total += n
    sizes = np.bincount(labels.ravel(), minlength=n_total + 1)[1:]
    zone_z = np.zeros(n_total + 1, dtype=np.int64)
    zz = np.broadcast_to(np.arange(g.shape[0])[:, None, None], g.shape)
    zone_z[labels.ravel()] = zz.ravel()
    zs = [zone_z[1:]]
    return Zones(labels, np.concatenate(zs), np.concatenate(greys) if greys else np.zeros(0, np.int64), sizes)


def zone_batches(zn: Zones, dims: str, n_slices: int) -> tuple[IntArray, int]:
    """Batch of each zone: its slice for 2D (features averaged over slices), one batch for 2.5D and 3D."""
    if dims == "2D":
        return zn.z, n_slices
    return np.zeros_like(zn.z), 1


def voxels_per_batch(grey: GreyImage, dims: str) -> FloatArray:
    counts = (grey.levels > 0).sum(axis=(1, 2)).astype(np.float64)
    return counts if dims == "2D" else np.array([counts.sum()])


def glszm_features(grey: GreyImage, dims: str, zn: Zones | None = None) -> dict[str, float]:
    zn = zn or zones(grey, dims)
    n_slices = grey.levels.shape[0]
    b, nb = zone_batches(zn, dims, n_slices)
    feats, valid = size_matrix_features(b, zn.grey, zn.size, np.ones(len(b)), nb, voxels_per_batch(grey, dims))
    return keyed(_IDS, _NAMES, mean_over_batches(feats, valid), undirected(dims))
