"""Grey level co-occurrence matrix features (IBSI 1, 3.6): symmetric, Chebyshev distance 1."""

from __future__ import annotations

import numpy as np

from imaging_cds.analysis.radiomics.features import GLCM
from imaging_cds.analysis.radiomics.texture.common import (
    DIRECTIONS_2D,
    DIRECTIONS_3D,
    FloatArray,
    GreyImage,
    directional_batches,
    interior,
    keyed,
    mean_over_batches,
    neighbour_view,
)

__all__ = ["glcm_features", "glcm_matrices"]

_NAMES = [
    "joint_max", "joint_avg", "joint_var", "joint_entropy", "diff_avg", "diff_var", "diff_entropy", "sum_avg",
    "sum_var", "sum_entropy", "asm", "contrast", "dissimilarity", "inv_diff", "inv_diff_norm", "inv_diff_mom",
    "inv_diff_mom_norm", "inv_var", "correlation", "autocorrelation", "clust_tend", "clust_shade", "clust_prom",
    "info_corr1", "info_corr2",
]  # fmt: skip
_IDS = [i for i, _ in GLCM]


def glcm_matrices(grey: GreyImage, dims: str) -> FloatArray:
    """Co-occurrence counts, shape (directions, slices, Ng, Ng); slices is 1 for 3D."""
    ng = grey.n_levels
    g = grey.levels
    a = interior(g)
    directions = DIRECTIONS_3D if dims == "3D" else DIRECTIONS_2D
    n_slices = 1 if dims == "3D" else a.shape[0]
    z = np.arange(a.shape[0])[:, None, None] * np.ones_like(a) if n_slices > 1 else np.zeros_like(a)
    mats = np.zeros((len(directions), n_slices, ng, ng))
    for k, d in enumerate(directions):
        b = neighbour_view(g, d)
        ok = (a > 0) & (b > 0)
        idx = (z[ok] * ng + (a[ok] - 1)) * ng + (b[ok] - 1)
        m = np.bincount(idx, minlength=n_slices * ng * ng).reshape(n_slices, ng, ng).astype(np.float64)
        mats[k] = m + m.transpose(0, 2, 1)
    return mats


def glcm_features(grey: GreyImage, dims: str) -> dict[str, float]:
    mats = glcm_matrices(grey, dims)
    n_dirs, n_slices, ng, _ = mats.shape
    flat = mats.reshape(n_dirs * n_slices, ng, ng)
    out: dict[str, float] = {}
    for agg, batch, nb in directional_batches(dims, n_dirs, n_slices):
        merged = np.zeros((nb, ng, ng))
        np.add.at(merged, batch, flat)
        valid = merged.sum(axis=(1, 2)) > 0
        feats = _features(merged[valid], ng)
        out.update(keyed(_IDS, _NAMES, mean_over_batches(feats, np.ones(int(valid.sum()), dtype=bool)), agg))
    return out


def _entropy(p: FloatArray, axis: tuple[int, ...]) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return np.asarray(-t.sum(axis=axis))


def _features(counts: FloatArray, ng: int) -> dict[str, FloatArray]:
    """Features of each matrix in ``counts`` (B, Ng, Ng)."""
    p = counts / counts.sum(axis=(1, 2), keepdims=True)
    lev = np.arange(1, ng + 1, dtype=np.float64)
    i = lev[:, None]
    j = lev[None, :]
    diff = np.abs(i - j)
    pi = p.sum(axis=2)  # (B, Ng) marginal over rows
    pj = p.sum(axis=1)
    mu_i = (pi * lev).sum(axis=1)
    mu_j = (pj * lev).sum(axis=1)
    var_i = (pi * (lev[None, :] - mu_i[:, None]) ** 2).sum(axis=1)
    var_j = (pj * (lev[None, :] - mu_j[:, None]) ** 2).sum(axis=1)
    # Diagonal and cross-diagonal probabilities.
    kd = diff.astype(np.int64)
    ks = (i + j).astype(np.int64)
    b_count = p.shape[0]
    p_diff = np.zeros((b_count, ng))
    p_sum = np.zeros((b_count, 2 * ng + 1))
    for k in range(ng):
        p_diff[:, k] = p[:, kd == k].sum(axis=1)
    for k in range(2, 2 * ng + 1):
        p_sum[:, k] = p[:, ks == k].sum(axis=1)
    kk = np.arange(ng, dtype=np.float64)
    ss = np.arange(2 * ng + 1, dtype=np.float64)
    diff_avg = (p_diff * kk).sum(axis=1)
    sum_avg = (p_sum * ss).sum(axis=1)
    hxy = _entropy(p, (1, 2))
    hx = _entropy(pi, (1,))
    pipj = pi[:, :, None] * pj[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_pipj = np.where(pipj > 0, np.log2(np.where(pipj > 0, pipj, 1.0)), 0.0)
    hxy1 = -(p * log_pipj).sum(axis=(1, 2))
    hxy2 = -(pipj * log_pipj).sum(axis=(1, 2))
    joint_avg = (p * i).sum(axis=(1, 2))
    cl = i + j - mu_i[:, None, None] - mu_j[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = ((p * (i - mu_i[:, None, None]) * (j - mu_j[:, None, None])).sum(axis=(1, 2))) / np.sqrt(var_i * var_j)
        info1 = (hxy - hxy1) / hx
    inv_var_w = np.divide(1.0, diff**2, out=np.zeros_like(diff), where=diff > 0)
    return {
        "joint_max": p.max(axis=(1, 2)),
        "joint_avg": joint_avg,
        "joint_var": (p * (i - joint_avg[:, None, None]) ** 2).sum(axis=(1, 2)),
        "joint_entropy": hxy,
        "diff_avg": diff_avg,
        "diff_var": (p_diff * (kk - diff_avg[:, None]) ** 2).sum(axis=1),
        "diff_entropy": _entropy(p_diff, (1,)),
        "sum_avg": sum_avg,
        "sum_var": (p_sum * (ss - sum_avg[:, None]) ** 2).sum(axis=1),
        "sum_entropy": _entropy(p_sum, (1,)),
        "asm": (p**2).sum(axis=(1, 2)),
        "contrast": (p * diff**2).sum(axis=(1, 2)),
        "dissimilarity": (p * diff).sum(axis=(1, 2)),
        "inv_diff": (p / (1.0 + diff)).sum(axis=(1, 2)),
        "inv_diff_norm": (p / (1.0 + diff / ng)).sum(axis=(1, 2)),
        "inv_diff_mom": (p / (1.0 + diff**2)).sum(axis=(1, 2)),
        "inv_diff_mom_norm": (p / (1.0 + diff**2 / ng**2)).sum(axis=(1, 2)),
        "inv_var": (p * inv_var_w).sum(axis=(1, 2)),
        "correlation": corr,
        "autocorrelation": (p * i * j).sum(axis=(1, 2)),
        "clust_tend": (p * cl**2).sum(axis=(1, 2)),
        "clust_shade": (p * cl**3).sum(axis=(1, 2)),
        "clust_prom": (p * cl**4).sum(axis=(1, 2)),
        "info_corr1": info1,
        "info_corr2": np.sqrt(np.maximum(1.0 - np.exp(-2.0 * (hxy2 - hxy)), 0.0)),
    }
