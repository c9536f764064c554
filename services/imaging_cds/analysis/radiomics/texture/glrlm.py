"""Grey level run length matrix features (IBSI 1, 3.7)."""

from __future__ import annotations

import numpy as np

from imaging_cds.analysis.radiomics.features import GLRLM
from imaging_cds.analysis.radiomics.texture.common import (
    DIRECTIONS_2D,
    DIRECTIONS_3D,
    SIZE_FEATURES,
    GreyImage,
    IntArray,
    directional_batches,
    keyed,
    mean_over_batches,
    size_matrix_features,
)

__all__ = ["glrlm_features", "runs"]

_IDS = [i for i, _ in GLRLM]
_NAMES = [n for n in SIZE_FEATURES if n != "energy"]


def runs(grey: GreyImage, direction: tuple[int, int, int]) -> tuple[IntArray, IntArray, IntArray]:
    """Runs of equal grey level along ``direction``: (slice of the run's first voxel, grey level, length)."""
    g = grey.levels
    idx = np.argwhere(g > 0)
    levels = g[idx[:, 0], idx[:, 1], idx[:, 2]]
    shape = np.asarray(g.shape)
    d = np.asarray(direction)
    # Steps back along the direction to the array's edge: the voxel's position on its line.
    steps = np.full(len(idx), np.iinfo(np.int64).max, dtype=np.int64)
    for axis in range(3):
        if d[axis] == 1:
            steps = np.minimum(steps, idx[:, axis])
        elif d[axis] == -1:
            steps = np.minimum(steps, shape[axis] - 1 - idx[:, axis])
    start = idx - steps[:, None] * d[None, :]
    line = np.ravel_multi_index(start.T, g.shape)
    order = np.lexsort((steps, line))
    line, steps, levels, z = line[order], steps[order], levels[order], idx[order, 0]
    new_run = np.ones(len(line), dtype=bool)
    new_run[1:] = (line[1:] != line[:-1]) | (steps[1:] != steps[:-1] + 1) | (levels[1:] != levels[:-1])
    starts = np.flatnonzero(new_run)
    lengths = np.diff(np.append(starts, len(line)))
    return z[starts], levels[starts], lengths


def glrlm_features(grey: GreyImage, dims: str) -> dict[str, float]:
    directions = DIRECTIONS_3D if dims == "3D" else DIRECTIONS_2D
    n_slices = 1 if dims == "3D" else grey.levels.shape[0]
    parts_b, parts_i, parts_j = [], [], []
    for k, d in enumerate(directions):
        z, lev, length = runs(grey, d)
        parts_b.append(k * n_slices + (z if n_slices > 1 else np.zeros_like(z)))
        parts_i.append(lev)
        parts_j.append(length)
    src_b = np.concatenate(parts_b)
    grey_lv = np.concatenate(parts_i)
    length = np.concatenate(parts_j)
    out: dict[str, float] = {}
    for agg, batch_of, nb in directional_batches(dims, len(directions), n_slices):
        b = batch_of[src_b]
        n_vox = np.bincount(b, weights=length.astype(np.float64), minlength=nb).astype(np.float64)
        feats, valid = size_matrix_features(b, grey_lv, length, np.ones(len(b)), nb, n_vox)
        out.update(keyed(_IDS, _NAMES, mean_over_batches(feats, valid), agg))
    return out
