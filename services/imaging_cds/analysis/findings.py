"""From a model's raw output to findings a clinician can read: per-model post-processing and interpretation.

``ANALYZERS`` maps a manifest's ``name`` to the function that turns (volume, model output) into ``Findings``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from imaging_cds.analysis.lung_density import (
    NoLungFoundError,
    extract_lungs,
    key_image_slice,
    measure_lung_density,
    render_key_image,
)
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.fhir import codes
from imaging_cds.fhir.report import Findings, MeasuredValue
from imaging_cds.imaging.volume import CtVolume

Analyzer = Callable[[CtVolume, np.ndarray], Findings]


def lung_density_findings(volume: CtVolume, candidate: np.ndarray) -> Findings:
    """Lung volume, LAA-950, mean lung density and P15 from the lung-density model's candidate mask.

    ``candidate``: uint8, same (z, y, x) shape and order as ``volume.hu``.
    """
    try:
        lungs = extract_lungs(candidate, volume.spacing_mm)
        measures = measure_lung_density(volume.hu, lungs, volume.spacing_mm)
    except NoLungFoundError as err:
        raise NotAnalyzableError(volume.study_uid, f"series {volume.series_uid}: {err}") from err
    emphysema = measures.laa950_percent >= codes.LAA950_EMPHYSEMA_THRESHOLD_PERCENT
    z = key_image_slice(lungs)
    if emphysema:
        conclusion = (
            f"Low-attenuation lung (LAA-950) {measures.laa950_percent:.1f} % of lung volume, at or above the "
            f"{codes.LAA950_EMPHYSEMA_THRESHOLD_PERCENT:g} % threshold: CT findings suggest emphysema."
        )
    else:
        conclusion = (
            f"Low-attenuation lung (LAA-950) {measures.laa950_percent:.1f} % of lung volume, below the "
            f"{codes.LAA950_EMPHYSEMA_THRESHOLD_PERCENT:g} % threshold: no quantitative CT evidence of emphysema."
        )
    laa_flag = codes.INTERPRETATION_HIGH if emphysema else codes.INTERPRETATION_NORMAL
    return Findings(
        series_uid=volume.series_uid,
        measurements=(
            MeasuredValue(codes.LUNG_VOLUME, measures.lung_volume_ml),
            MeasuredValue(codes.LAA950, measures.laa950_percent, laa_flag),
            MeasuredValue(codes.MEAN_LUNG_DENSITY, measures.mean_lung_density_hu),
            MeasuredValue(codes.P15_DENSITY, measures.p15_hu),
        ),
        conclusion=conclusion,
        conclusion_codes=(codes.PULMONARY_EMPHYSEMA,) if emphysema else (),
        key_image_png=render_key_image(volume.hu[z], lungs[z]),
        key_image_title=f"Axial slice {z + 1} of {volume.hu.shape[0]}: lung outline, LAA-950 voxels tinted",
    )


ANALYZERS: dict[str, Analyzer] = {"lung-density": lung_density_findings}
