"""Morphological features (IBSI 1, section 3.1) of the ROI, from a marching-cubes mesh and voxel positions.

The mesh is built on the morphological mask (the ROI after interpolation, before re-segmentation), padded with
empty voxels, at the 0.5 level, in mm. Voxel positions are voxel centres in mm, ``(z, y, x)``. Integrated
intensity, centre of mass shift, Moran's I and Geary's C use the intensities in the intensity mask.

Moran's I and Geary's C are exact: their sums over all voxel pairs, weighted by inverse distance, are
convolutions of the ROI with an inverse-distance kernel, computed by FFT in O(n log n) rather than O(n^2). For a
large ROI (an FFT grid over ``_SINGLE_PRECISION_FFT`` points, e.g. a whole lung at 2 mm) the FFTs run in single
precision, three times faster; the sums then carry a relative error of about 1e-7, far below any IBSI tolerance.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft, spatial, special
from skimage.measure import marching_cubes

from imaging_cds.analysis.radiomics.processing import BoolArray, FloatArray, ProcessedRoi

__all__ = ["morphology"]

_SINGLE_PRECISION_FFT = 2**22  # FFT grid points above which Moran's I and Geary's C use float32 FFTs


def morphology(roi: ProcessedRoi) -> dict[str, float]:
    spacing = np.asarray(roi.spacing_mm)
    mask = roi.morph_mask
    verts, faces = _mesh(mask, spacing)
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    volume = abs(float(np.sum(np.einsum("ij,ij->i", a, np.cross(b, c)))) / 6.0)
    area = float(np.sum(np.linalg.norm(np.cross(b - a, c - a), axis=1)) / 2.0)
    n_vox = int(mask.sum())
    out: dict[str, float] = {
        "RNU0": volume,
        "YEKZ": n_vox * float(np.prod(spacing)),
        "C0JK": area,
        "2PR5": area / volume,
        "SKGS": volume / (math.sqrt(math.pi) * area**1.5),
        "BQWJ": 36.0 * math.pi * volume**2 / area**3,
        "KRCK": area / (36.0 * math.pi * volume**2) ** (1.0 / 3.0),
        "QCFX": (36.0 * math.pi * volume**2) ** (1.0 / 3.0) / area,
        "25C7": (area**3 / (36.0 * math.pi * volume**2)) ** (1.0 / 3.0) - 1.0,
    }
    pos_morph = np.argwhere(mask) * spacing
    imask = roi.intensity_mask
    pos_int = np.argwhere(imask) * spacing
    vals = roi.image[imask]
    centre = pos_morph.mean(axis=0)
    weighted = (pos_int * vals[:, None]).sum(axis=0) / vals.sum()
    out["KLMA"] = float(np.linalg.norm(centre - weighted))

    hull = spatial.ConvexHull(verts)
    hv = verts[hull.vertices]
    out["L0JK"] = _max_diameter(hv)

    eig = np.sort(np.linalg.eigvalsh(np.cov(pos_morph.T)))[::-1] if n_vox > 1 else np.zeros(3)
    lmaj, lmin, llea = (max(float(e), 0.0) for e in eig)
    out["TDIC"] = 4.0 * math.sqrt(lmaj)
    out["P9VJ"] = 4.0 * math.sqrt(lmin)
    out["7J51"] = 4.0 * math.sqrt(llea)
    out["Q3CK"] = math.sqrt(lmin / lmaj) if lmaj > 0 else math.nan
    out["N17B"] = math.sqrt(llea / lmaj) if lmaj > 0 else math.nan

    ext = verts.max(axis=0) - verts.min(axis=0)
    out["PBX1"] = volume / float(np.prod(ext))
    out["R59B"] = area / float(2.0 * (ext[0] * ext[1] + ext[1] * ext[2] + ext[0] * ext[2]))
    sa, sb, sc = 2.0 * math.sqrt(lmaj), 2.0 * math.sqrt(lmin), 2.0 * math.sqrt(llea)
    out["6BDE"] = volume / (4.0 * math.pi * sa * sb * sc / 3.0)
    out["RDD2"] = area / _ellipsoid_area(sa, sb, sc)
    out["R3ER"] = volume / float(hull.volume)
    out["7T7F"] = area / float(hull.area)
    out["99N0"] = float(vals.mean()) * volume
    moran, geary = _spatial_autocorrelation(roi.image, imask, roi.spacing_mm)
    out["N365"] = moran
    out["NPT7"] = geary
    return out


def _mesh(mask: BoolArray, spacing: FloatArray) -> tuple[FloatArray, np.ndarray]:
    padded = np.pad(mask, 1).astype(np.float64)
    verts, faces, _, _ = marching_cubes(  # type: ignore[no-untyped-call]
        padded, level=0.5, spacing=tuple(spacing), method="lewiner"
    )
    return np.asarray(verts, dtype=np.float64), np.asarray(faces)


def _max_diameter(points: FloatArray) -> float:
    best = 0.0
    for start in range(0, len(points), 512):
        d = spatial.distance.cdist(points[start : start + 512], points)
        best = max(best, float(d.max()))
    return best


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    """Surface area of an ellipsoid with semi-axes a >= b >= c (IBSI's Legendre series, 20 terms)."""
    if a <= 0:
        return math.nan
    alpha = math.sqrt(max(1.0 - b**2 / a**2, 0.0))
    beta = math.sqrt(max(1.0 - c**2 / a**2, 0.0))
    x = 1.0 if alpha * beta == 0 else (alpha**2 + beta**2) / (2.0 * alpha * beta)
    total = 0.0
    for nu in range(21):
        total += (alpha * beta) ** nu / (1.0 - 4.0 * nu**2) * float(special.eval_legendre(nu, x))
    return 4.0 * math.pi * a * b * total


def _spatial_autocorrelation(
    image: FloatArray, mask: BoolArray, spacing: tuple[float, float, float]
) -> tuple[float, float]:
    """Moran's I and Geary's C with weights 1/distance (mm) between voxel centres in ``mask``."""
    idx = np.argwhere(mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    m = mask[box].astype(np.float64)
    x = np.where(mask[box], image[box], 0.0)
    n = float(m.sum())
    if n < 2:
        return math.nan, math.nan
    mu = float(x.sum()) / n
    z = (x - mu) * m
    shape = m.shape
    # Only the outputs over the box are needed: a cyclic convolution of length >= 2s - 1 per axis (the kernel's
    # length) does not wrap onto them, so there is no need to pad to the full linear length 3s - 2.
    fshape = [fft.next_fast_len(2 * s - 1, real=True) for s in shape]
    dtype = np.float32 if math.prod(fshape) > _SINGLE_PRECISION_FFT else np.float64
    dz, dy, dx = (np.arange(-(s - 1), s, dtype=np.float64) * sp for s, sp in zip(shape, spacing, strict=True))
    d2: FloatArray = dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2
    kernel = np.divide(1.0, np.sqrt(d2), out=np.zeros_like(d2), where=d2 > 0)
    fk = fft.rfftn(kernel.astype(dtype), fshape, workers=-1)
    crop = tuple(slice(s - 1, 2 * s - 1) for s in shape)

    def weighted_sum(a: FloatArray) -> FloatArray:
        """(W a)_i = sum over j != i of w_ij a_j, on the box."""
        conv = fft.irfftn(fft.rfftn(a.astype(dtype), fshape, workers=-1) * fk, fshape, workers=-1)
        return np.asarray(conv[crop], dtype=np.float64)

    w_m = weighted_sum(m)
    w_z = weighted_sum(z)
    w_total = float(np.sum(m * w_m))
    zz = float(np.sum(z * z))
    if zz == 0 or w_total == 0:
        return math.nan, math.nan
    cross = float(np.sum(z * w_z))  # sum_ij w_ij z_i z_j
    moran = n / w_total * cross / zz
    # sum_ij w_ij (x_i - x_j)^2 = 2 sum_i z_i^2 (W m)_i - 2 sum_ij w_ij z_i z_j (x - mu = z inside the ROI)
    sq = 2.0 * float(np.sum(z * z * w_m)) - 2.0 * cross
    geary = (n - 1.0) / (2.0 * w_total) * sq / zz
    return moran, geary
