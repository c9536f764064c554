"""Local intensity, intensity-based statistics, intensity histogram and intensity-volume histogram (IBSI 1, 3.2-3.5).

All take a :class:`~imaging_cds.analysis.radiomics.processing.ProcessedRoi` (or its values) and return
``{feature key: value}``; intensities are in the image's unit, grey levels are dimensionless.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft

from imaging_cds.analysis.radiomics.config import Discretisation
from imaging_cds.analysis.radiomics.processing import FloatArray, IntArray, ProcessedRoi

__all__ = ["histogram_features", "intensity_volume_histogram", "local_intensity", "statistics"]

# Radius of a 1 cm^3 sphere, in mm.
_PEAK_RADIUS_MM = (3.0 / (4.0 * math.pi) * 1000.0) ** (1.0 / 3.0)


def local_intensity(roi: ProcessedRoi) -> dict[str, float]:
    """Local (VJGA) and global (0F91) intensity peak: means over a 1 cm^3 sphere around ROI voxels.

    The sphere takes every image voxel whose centre lies within 6.2 mm, in or outside the ROI; the local peak is
    centred on the ROI's most intense voxel (the highest mean where several tie).
    """
    sz, sy, sx = roi.spacing_mm
    rz, ry, rx = (int(_PEAK_RADIUS_MM // s) for s in (sz, sy, sx))
    dz, dy, dx = np.meshgrid(
        np.arange(-rz, rz + 1) * sz, np.arange(-ry, ry + 1) * sy, np.arange(-rx, rx + 1) * sx, indexing="ij"
    )
    kernel = (dz**2 + dy**2 + dx**2 <= _PEAK_RADIUS_MM**2 + 1e-9).astype(np.float64)
    img = roi.image
    total = _convolve_same(img, kernel)
    count = _convolve_same(np.ones_like(img), kernel)
    means = total / np.maximum(np.round(count), 1.0)
    mask = roi.intensity_mask
    vals = img[mask]
    local = float(means[mask][vals == vals.max()].max())
    return {"VJGA": local, "0F91": float(means[mask].max())}


def _convolve_same(a: FloatArray, kernel: FloatArray) -> FloatArray:
    """``a`` convolved with an odd-sized symmetric ``kernel``, zero outside ``a``, same shape as ``a``."""
    shape = [n + k - 1 for n, k in zip(a.shape, kernel.shape, strict=True)]
    fshape = [fft.next_fast_len(n, real=True) for n in shape]
    out = fft.irfftn(fft.rfftn(a, fshape) * fft.rfftn(kernel, fshape), fshape, workers=-1)
    crop = tuple(slice(k // 2, k // 2 + n) for n, k in zip(a.shape, kernel.shape, strict=True))
    return np.asarray(out[crop])


def _moments(x: FloatArray) -> dict[str, float]:
    """First-order statistics of ``x``; from its histogram when ``x`` holds integers (rounded HU, grey levels), which
    gives the same values as the direct sums (to rounding) in one pass over the voxels instead of a dozen."""
    values, counts = _integer_histogram(x)
    if values is None:
        return _moments_direct(x)
    return _moments_of(values, counts)


def _integer_histogram(x: FloatArray) -> tuple[FloatArray | None, FloatArray]:
    """(distinct values, their counts) when ``x`` holds integers in a modest range; (None, empty) otherwise."""
    if x.size == 0:
        return None, np.zeros(0)
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi - lo > 1 << 16:
        return None, np.zeros(0)
    shifted = (x - lo).astype(np.int64)
    if not np.array_equal(shifted, x - lo):
        return None, np.zeros(0)
    counts = np.bincount(shifted).astype(np.float64)
    present = np.flatnonzero(counts)
    return present.astype(np.float64) + lo, counts[present]


def _moments_of(g: FloatArray, c: FloatArray) -> dict[str, float]:
    """Statistics of a sample given as distinct sorted values ``g`` with counts ``c``."""
    n = float(c.sum())
    cum = np.cumsum(c)

    def percentile(q: float) -> float:  # numpy's default (linear) method on the sorted sample
        h = (n - 1.0) * q / 100.0
        k = math.floor(h)
        below = float(g[np.searchsorted(cum, k, side="right")])
        above = float(g[np.searchsorted(cum, min(k + 1, n - 1), side="right")])
        return below + (h - k) * (above - below)

    mean = float(np.dot(c, g)) / n
    dev = g - mean
    d2 = dev * dev
    m2 = float(np.dot(c, d2)) / n
    m3 = float(np.dot(c, d2 * dev)) / n
    m4 = float(np.dot(c, d2 * d2)) / n
    p10, p25, p50, p75, p90 = (percentile(q) for q in (10, 25, 50, 75, 90))
    inner = (g >= p10) & (g <= p90)
    rc, rg = c[inner], g[inner]
    robust_mean = float(np.dot(rc, rg)) / float(rc.sum())
    lo, hi = float(g[0]), float(g[-1])
    return _summary(mean, m2, m3, m4, (p10, p25, p50, p75, p90), lo, hi,
                    mad=float(np.dot(c, np.abs(dev))) / n,
                    rmad=float(np.dot(rc, np.abs(rg - robust_mean))) / float(rc.sum()),
                    medad=float(np.dot(c, np.abs(g - p50))) / n)  # fmt: skip


def _moments_direct(x: FloatArray) -> dict[str, float]:
    mean = float(x.mean())
    dev = x - mean
    d2 = dev * dev
    m2 = float(np.mean(d2))
    m3 = float(np.mean(d2 * dev))
    m4 = float(np.mean(d2 * d2))
    p10, p25, p50, p75, p90 = (float(v) for v in np.percentile(x, [10, 25, 50, 75, 90]))
    robust = x[(x >= p10) & (x <= p90)]
    return _summary(mean, m2, m3, m4, (p10, p25, p50, p75, p90), float(x.min()), float(x.max()),
                    mad=float(np.mean(np.abs(dev))),
                    rmad=float(np.mean(np.abs(robust - robust.mean()))),
                    medad=float(np.mean(np.abs(x - p50))))  # fmt: skip


def _summary(
    mean: float,
    m2: float,
    m3: float,
    m4: float,
    percentiles: tuple[float, float, float, float, float],
    lo: float,
    hi: float,
    *,
    mad: float,
    rmad: float,
    medad: float,
) -> dict[str, float]:
    p10, p25, p50, p75, p90 = percentiles
    return {
        "mean": mean,
        "var": m2,
        "skew": m3 / m2**1.5 if m2 > 0 else 0.0,
        "kurt": m4 / m2**2 - 3.0 if m2 > 0 else 0.0,
        "median": p50,
        "min": lo,
        "p10": p10,
        "p90": p90,
        "max": hi,
        "iqr": p75 - p25,
        "range": hi - lo,
        "mad": mad,
        "rmad": rmad,
        "medad": medad,
        "cov": math.sqrt(m2) / mean if mean != 0 else math.nan,
        "qcod": (p75 - p25) / (p75 + p25) if (p75 + p25) != 0 else math.nan,
    }


def statistics(values: FloatArray) -> dict[str, float]:
    """Intensity-based statistics of the voxel intensities in the intensity mask."""
    m = _moments(values)
    energy = float(np.dot(values, values))
    keys = {
        "Q4LE": "mean", "ECT3": "var", "KE2A": "skew", "IPH6": "kurt", "Y12H": "median", "1GSF": "min",
        "QG58": "p10", "8DWT": "p90", "84IY": "max", "SALO": "iqr", "2OJQ": "range", "4FUA": "mad",
        "1128": "rmad", "N72L": "medad", "7TET": "cov", "9S40": "qcod",
    }  # fmt: skip
    out = {k: m[v] for k, v in keys.items()}
    out["N8CA"] = energy
    out["5ZWQ"] = math.sqrt(energy / values.size)
    return out


def histogram_features(levels: IntArray) -> dict[str, float]:
    """Intensity histogram features of the discretised intensities (grey levels) in the intensity mask."""
    x = levels.astype(np.float64)
    m = _moments(x)
    keys = {
        "X6K6": "mean", "CH89": "var", "88K1": "skew", "C3I7": "kurt", "WIFQ": "median", "1PR8": "min",
        "GPMT": "p10", "OZ0C": "p90", "3NCY": "max", "WR0O": "iqr", "5Z3W": "range", "D2ZX": "mad",
        "WRZB": "rmad", "4RNL": "medad", "CWYJ": "cov", "SLWD": "qcod",
    }  # fmt: skip
    out = {k: m[v] for k, v in keys.items()}
    lo = int(levels.min())
    counts = np.bincount(levels - lo).astype(np.float64)
    grey = np.arange(lo, lo + counts.size, dtype=np.float64)
    p = counts / counts.sum()
    nz = p > 0
    modes = grey[counts == counts.max()]
    out["AMMC"] = float(modes[np.argmin(np.abs(modes - m["mean"]))])
    out["TLU2"] = float(-np.sum(p[nz] * np.log2(p[nz])))
    out["BJ5W"] = float(np.sum(p**2))
    grad = np.gradient(counts) if counts.size > 1 else np.zeros(1)
    out["12CE"] = float(grad.max())
    out["8E6O"] = float(grey[np.argmax(grad)])
    out["VQB3"] = float(grad.min())
    out["RHQZ"] = float(grey[np.argmin(grad)])
    return out


def intensity_volume_histogram(
    values: FloatArray, method: Discretisation, range_min: float | None, range_max: float | None
) -> tuple[dict[str, float], bool]:
    """IVH features, and whether their intensities are in the image's unit (False: grey levels).

    Intensities are taken as they are (``none``; a unit grid between the lowest and highest intensity for
    integer-valued images), as bin centres (fixed bin size, bins anchored at the re-segmentation range's lower
    bound), or as grey levels (fixed bin number). The intensity fraction runs from the lowest to the highest
    possible intensity: the re-segmentation range where one is set for fixed bin size, else the ROI's extremes.
    """
    if method.method == "fbs":
        w = method.value
        x_min = float(values.min()) if range_min is None else range_min
        k = np.floor((values - x_min) / w + 1e-9) + 1
        x = x_min + (k - 0.5) * w
        lo = x_min + 0.5 * w
        hi = float(x.max()) if range_max is None else x_min + (math.floor((range_max - x_min) / w + 1e-9) + 0.5) * w
        grid = lo + np.arange(round((float(x.max()) - lo) / w) + 1) * w
        in_unit = True
    elif method.method == "fbn":
        n = int(method.value)
        vmin, vmax = float(values.min()), float(values.max())
        x = np.minimum(np.floor(n * (values - vmin) / (vmax - vmin)) + 1, n) if vmax > vmin else np.ones_like(values)
        lo, hi = 1.0, float(n)
        grid = np.arange(1.0, n + 1.0)
        in_unit = False
    else:
        x = values
        lo, hi = float(x.min()), float(x.max())
        integral = bool(np.all(np.equal(np.mod(x, 1.0), 0.0)))
        grid = np.arange(lo, hi + 1.0) if integral else np.unique(x)
        in_unit = True
    xs = np.sort(x)
    n_vox = xs.size
    span = hi - lo

    def volume_at(fraction: float) -> float:
        """Fraction of the volume with an intensity fraction of at least ``fraction``."""
        threshold = lo + fraction * span
        return float(n_vox - np.searchsorted(xs, threshold - 1e-9 * max(abs(span), 1.0), side="left")) / n_vox

    # Fraction of volume at or above each grid intensity; I_x is the lowest grid intensity where it is <= x.
    at_or_above = (n_vox - np.searchsorted(xs, grid - 1e-9, side="left")) / n_vox

    def intensity_at(fraction: float) -> float:
        ok = np.flatnonzero(at_or_above <= fraction)
        return float(grid[ok[0]]) if ok.size else float(grid[-1])

    v10, v90 = volume_at(0.10), volume_at(0.90)
    i10, i90 = intensity_at(0.10), intensity_at(0.90)
    out = {
        "BC2M.V10": v10,
        "BC2M.V90": v90,
        "GBPN.I10": i10,
        "GBPN.I90": i90,
        "DDTU": v10 - v90,
        "CNV2": i10 - i90,
    }
    return out, in_unit
