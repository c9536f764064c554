"""Grey level distance zone matrix features (IBSI 1, 3.9).

A zone's distance is the smallest distance of its voxels to the ROI edge, in voxel steps with 6-connectivity (3D)
or 4-connectivity (2D); voxels on the edge are at distance 1. The edge is that of the ROI before re-segmentation
(the morphological mask), as the IBSI reference values assume.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from imaging_cds.analysis.radiomics.features import GLDZM
from imaging_cds.analysis.radiomics.texture.common import (
    SIZE_FEATURES,
    GreyImage,
    IntArray,
    keyed,
    mean_over_batches,
    size_matrix_features,
    undirected,
)
from imaging_cds.analysis.radiomics.texture.glszm import Zones, voxels_per_batch, zone_batches, zones

__all__ = ["edge_distance", "gldzm_features"]

_IDS = [i for i, _ in GLDZM]
_NAMES = [n for n in SIZE_FEATURES if n != "energy"]


def edge_distance(mask: np.ndarray, dims: str) -> IntArray:
    """Taxicab distance of each voxel in ``mask`` (padded by one empty voxel) to the nearest voxel outside it."""
    structure = ndimage.generate_binary_structure(3, 1)
    if dims != "3D":
        structure[0] = False
        structure[2] = False
    return np.asarray(ndimage.distance_transform_cdt(mask, metric=structure), dtype=np.int64)


def gldzm_features(grey: GreyImage, dims: str, zn: Zones | None = None) -> dict[str, float]:
    zn = zn or zones(grey, dims)
    n_zones = len(zn.grey)
    dist = edge_distance(grey.roi, dims)
    zone_dist = np.asarray(
        ndimage.minimum(dist, labels=zn.labels, index=np.arange(1, n_zones + 1)), dtype=np.int64
    ).reshape(-1)
    b, nb = zone_batches(zn, dims, grey.levels.shape[0])
    feats, valid = size_matrix_features(b, zn.grey, zone_dist, np.ones(n_zones), nb, voxels_per_batch(grey, dims))
    return keyed(_IDS, _NAMES, mean_over_batches(feats, valid), undirected(dims))
