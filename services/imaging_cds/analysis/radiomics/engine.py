"""``compute_features``: one ROI through IBSI processing to every configured feature, keyed by IBSI identifier."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import numpy.typing as npt

from imaging_cds.analysis.radiomics import intensity, morphology
from imaging_cds.analysis.radiomics.config import ConfigError, RadiomicsConfig
from imaging_cds.analysis.radiomics.features import unit_for
from imaging_cds.analysis.radiomics.processing import ProcessedRoi, discretise, process
from imaging_cds.analysis.radiomics.texture.common import GreyImage
from imaging_cds.analysis.radiomics.texture.glcm import glcm_features
from imaging_cds.analysis.radiomics.texture.gldzm import gldzm_features
from imaging_cds.analysis.radiomics.texture.glrlm import glrlm_features
from imaging_cds.analysis.radiomics.texture.glszm import glszm_features, zones
from imaging_cds.analysis.radiomics.texture.ngldm import ngldm_features
from imaging_cds.analysis.radiomics.texture.ngtdm import ngtdm_features

__all__ = ["RadiomicsResult", "compute_features", "extract"]


@dataclass(frozen=True)
class RadiomicsResult:
    """Feature values keyed as in :mod:`~imaging_cds.analysis.radiomics.features`, their UCUM units, and timing."""

    values: dict[str, float]
    units: dict[str, str]
    config: RadiomicsConfig
    n_voxels: int  # voxels in the intensity mask after processing
    seconds: dict[str, float] = field(default_factory=dict)

    def as_pairs(self) -> dict[str, tuple[float, str]]:
        return {k: (v, self.units[k]) for k, v in self.values.items()}


def compute_features(
    image: npt.ArrayLike, mask: npt.ArrayLike, spacing: tuple[float, float, float], config: RadiomicsConfig
) -> dict[str, tuple[float, str]]:
    """IBSI features of one region: ``{feature key: (value, UCUM unit)}``.

    ``image`` and ``mask`` (non-zero = in the region) are ``(z, y, x)`` arrays; ``spacing`` is ``(z, y, x)`` in
    mm. Keys are IBSI identifiers, qualified by aggregation or parameter where IBSI reuses one (see ``FEATURES``).
    """
    return extract(image, mask, spacing, config).as_pairs()


def extract(
    image: npt.ArrayLike, mask: npt.ArrayLike, spacing: tuple[float, float, float], config: RadiomicsConfig
) -> RadiomicsResult:
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    roi = process(image, mask, spacing, config)
    seconds["processing"] = time.perf_counter() - t0
    values: dict[str, float] = {}
    ivh_unit = config.intensity_unit

    def timed(name: str, fn: Callable[[], dict[str, float]]) -> None:
        t = time.perf_counter()
        values.update(fn())
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t

    fams = set(config.families)
    if "morphology" in fams:
        timed("morphology", lambda: morphology.morphology(roi))
    if "local_intensity" in fams:
        timed("local_intensity", lambda: intensity.local_intensity(roi))
    if "statistics" in fams:
        timed("statistics", lambda: intensity.statistics(roi.values))
    if "ivh" in fams:
        ivh, in_unit = intensity.intensity_volume_histogram(
            roi.values, config.ivh_discretisation, roi.range_min, roi.range_max
        )
        values.update(ivh)
        ivh_unit = config.intensity_unit if in_unit else "1"
    texture = fams & {"glcm", "glrlm", "glszm", "gldzm", "ngtdm", "ngldm"}
    if "histogram" in fams or texture:
        levels = discretise(roi.values, config.texture_discretisation, roi.range_min)
        if "histogram" in fams:
            timed("histogram", lambda: intensity.histogram_features(levels))
        if texture:
            _texture(roi, levels, config, texture, timed)
    units = {k: unit_for(k, config.intensity_unit, ivh_unit) for k in values}
    seconds["total"] = time.perf_counter() - t0
    clean = {k: (float(v) if v is not None and math.isfinite(v) else math.nan) for k, v in values.items()}
    return RadiomicsResult(clean, units, config, int(roi.intensity_mask.sum()), seconds)


def _texture(
    roi: ProcessedRoi,
    levels: npt.NDArray[np.int64],
    config: RadiomicsConfig,
    families: set[str],
    timed: Callable[[str, Callable[[], dict[str, float]]], None],
) -> None:
    grid = np.zeros(roi.image.shape, dtype=np.int64)
    grid[roi.intensity_mask] = levels
    if levels.min() < 1:
        raise ConfigError("texture needs grey levels >= 1: set a discretisation (bin size or number)")
    grey = GreyImage.from_levels(grid, roi.intensity_mask, roi.morph_mask)
    for dims in config.aggregations:
        zn = zones(grey, dims) if families & {"glszm", "gldzm"} else None
        calls: dict[str, Callable[[], dict[str, float]]] = {
            "glcm": partial(glcm_features, grey, dims),
            "glrlm": partial(glrlm_features, grey, dims),
            "glszm": partial(glszm_features, grey, dims, zn),
            "gldzm": partial(gldzm_features, grey, dims, zn),
            "ngtdm": partial(ngtdm_features, grey, dims),
            "ngldm": partial(ngldm_features, grey, dims),
        }
        for name, call in calls.items():
            if name in families:
                timed(name, call)
