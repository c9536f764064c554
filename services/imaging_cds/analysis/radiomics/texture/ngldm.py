"""Neighbouring grey level dependence matrix features (IBSI 1, 3.11): Chebyshev distance 1, coarseness 0.

A voxel's dependence count is one plus the number of its neighbours in the ROI with the same grey level.
"""

from __future__ import annotations

import numpy as np

from imaging_cds.analysis.radiomics.features import NGLDM
from imaging_cds.analysis.radiomics.texture.common import (
    DIRECTIONS_2D,
    DIRECTIONS_3D,
    SIZE_FEATURES,
    GreyImage,
    interior,
    keyed,
    mean_over_batches,
    neighbour_view,
    size_matrix_features,
    undirected,
)

__all__ = ["ngldm_features"]

_IDS = [i for i, _ in NGLDM]
_NAMES = list(SIZE_FEATURES)


def ngldm_features(grey: GreyImage, dims: str) -> dict[str, float]:
    g = grey.levels
    a = interior(g)
    dependence = np.ones(a.shape, dtype=np.int64)
    for d in DIRECTIONS_3D if dims == "3D" else DIRECTIONS_2D:
        for sign in (1, -1):
            b = neighbour_view(g, (sign * d[0], sign * d[1], sign * d[2]))
            dependence += (b == a) & (a > 0)
    ok = a > 0
    levels = a[ok]
    dep = dependence[ok]
    if dims == "2D":
        batch = np.argwhere(ok)[:, 0]
        nb = a.shape[0]
    else:
        batch = np.zeros(len(levels), dtype=np.int64)
        nb = 1
    n_vox = np.bincount(batch, minlength=nb).astype(np.float64)
    feats, valid = size_matrix_features(batch, levels, dep, np.ones(len(levels)), nb, n_vox)
    return keyed(_IDS, _NAMES, mean_over_batches(feats, valid), undirected(dims))
