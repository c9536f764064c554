"""Neighbourhood grey tone difference matrix features (IBSI 1, 3.10): Chebyshev distance 1, neighbours in the ROI.

A voxel's neighbourhood average uses only neighbours inside the ROI; voxels with none are left out.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from imaging_cds.analysis.radiomics.features import NGTDM
from imaging_cds.analysis.radiomics.texture.common import FloatArray, GreyImage, keyed, mean_over_batches, undirected

__all__ = ["ngtdm_features"]

_IDS = [i for i, _ in NGTDM]
_NAMES = ["coarseness", "contrast", "busyness", "complexity", "strength"]


def _kernel(dims: str) -> FloatArray:
    k = np.ones((3, 3, 3))
    if dims != "3D":
        k[0] = 0.0
        k[2] = 0.0
    k[1, 1, 1] = 0.0
    return k


def ngtdm_features(grey: GreyImage, dims: str) -> dict[str, float]:
    g = grey.levels
    ng = grey.n_levels
    mask = g > 0
    kernel = _kernel(dims)
    total = ndimage.correlate(g.astype(np.float64), kernel, mode="constant")
    count = ndimage.correlate(mask.astype(np.float64), kernel, mode="constant")
    ok = mask & (count > 0)
    levels = g[ok]
    diff = np.abs(levels - total[ok] / count[ok])
    n_slices = g.shape[0]
    batch = np.argwhere(ok)[:, 0] if dims == "2D" else np.zeros(len(levels), dtype=np.int64)
    nb = n_slices if dims == "2D" else 1
    cell = batch * ng + (levels - 1)
    s = np.bincount(cell, weights=diff, minlength=nb * ng).reshape(nb, ng).astype(np.float64)
    n = np.bincount(cell, minlength=nb * ng).reshape(nb, ng).astype(np.float64)
    feats = _features(s, n)
    valid = n.sum(axis=1) > 0
    return keyed(_IDS, _NAMES, mean_over_batches(feats, valid), undirected(dims))


def _features(s: FloatArray, n: FloatArray) -> dict[str, FloatArray]:
    nb, ng = s.shape
    out: dict[str, FloatArray] = {k: np.full(nb, math.nan) for k in _NAMES}
    lev = np.arange(1, ng + 1, dtype=np.float64)
    for b in range(nb):
        nvc = n[b].sum()
        if nvc == 0:
            continue
        present = n[b] > 0
        p = n[b][present] / nvc
        si = s[b][present]
        i = lev[present]
        ngp = len(p)
        ps = float(np.sum(p * si))
        s_total = float(si.sum())
        dij = i[:, None] - i[None, :]
        out["coarseness"][b] = 1.0 / ps if ps > 0 else 1e6
        if ngp > 1:
            out["contrast"][b] = float(np.sum(p[:, None] * p[None, :] * dij**2)) / (ngp * (ngp - 1)) * s_total / nvc
        else:
            out["contrast"][b] = 0.0
        busy = float(np.sum(np.abs((i * p)[:, None] - (i * p)[None, :])))
        out["busyness"][b] = ps / busy if busy > 0 else 0.0
        pss = p * si
        out["complexity"][b] = (
            float(np.sum(np.abs(dij) * (pss[:, None] + pss[None, :]) / (p[:, None] + p[None, :]))) / nvc
        )
        out["strength"][b] = float(np.sum((p[:, None] + p[None, :]) * dij**2)) / s_total if s_total > 0 else 0.0
    return out
