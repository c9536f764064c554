"""From a model's raw output to findings a clinician can read: per-model post-processing and interpretation.

``ANALYZERS`` maps a manifest's ``name`` to the function that turns (volume, model output) into ``Findings``; with
the manifest's ``radiomics`` configuration it also computes the IBSI features of each segmented region.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from imaging_cds.analysis.classification import classification_findings
from imaging_cds.analysis.lung_density import (
    LAA_THRESHOLD_HU,
    LungDensityMeasures,
    NoLungFoundError,
    extract_lungs,
    key_image_slice,
    lung_box,
    measure_lung_density,
    render_key_image,
)
from imaging_cds.analysis.nodule_findings import nodule_findings
from imaging_cds.analysis.radiomics.config import RadiomicsConfig
from imaging_cds.analysis.radiomics.features import FEATURES
from imaging_cds.analysis.segmentation import segmentation_findings
from imaging_cds.errors import ModelConfigurationError, NotAnalyzableError
from imaging_cds.fhir import codes
from imaging_cds.fhir.codes import Code, Unit
from imaging_cds.fhir.report import (
    CodedFinding,
    Component,
    FeatureValue,
    Findings,
    MeasuredValue,
    RegionFeatures,
)
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.manifest import ModelManifest
from imaging_cds.inference.windows import ResampledOutput

log = logging.getLogger(__name__)

# UCUM units of radiomics features, as charted (the display beside the UCUM code).
_UNIT_DISPLAY = {"[hnsf'U]": "HU", "[hnsf'U]2": "HU2", "[hnsf'U].mm3": "HU.mm3"}


class Analyzer(Protocol):
    """(volume, model output[, radiomics configuration]) -> findings."""

    def __call__(
        self, volume: CtVolume, output: np.ndarray, /, radiomics: RadiomicsConfig | None = None
    ) -> Findings: ...


def region_features(
    key: str,
    region: Code,
    image: npt.NDArray[np.generic],
    mask: npt.NDArray[np.bool_],
    spacing_mm: tuple[float, float, float],
    config: RadiomicsConfig,
) -> RegionFeatures | None:
    """The IBSI features of one region as charted, or None when the region has no voxel left to analyse.

    ``key`` names the region in result identifiers (``radiomics-<key>``); ``region`` becomes the bodySite.
    """
    from imaging_cds.analysis.radiomics.engine import extract  # scipy/scikit-image, only when asked for
    from imaging_cds.analysis.radiomics.processing import EmptyRoiError

    try:
        result = extract(image, mask, spacing_mm, config)
    except EmptyRoiError as err:
        log.info("radiomics of %s skipped: %s", key, err)
        return None
    features = []
    for k, value in result.values.items():
        f = FEATURES[k]
        ucum = result.units[k]
        base_name = f.name.split(" (")[0] if f.aggregation else f.name
        features.append(
            FeatureValue(
                code=Code(codes.IBSI, f.ibsi_id, base_name),
                value=value,
                unit=None if ucum == "1" else Unit(ucum, _UNIT_DISPLAY.get(ucum, ucum)),
                aggregation=Code(codes.IBSI, f.aggregation.ibsi_id, f.aggregation.name) if f.aggregation else None,
                text=f.name if f.aggregation else "",
            )
        )
    return RegionFeatures(key=f"radiomics-{key}", region=region, method=config.describe(), features=tuple(features))


def lung_density_findings(
    volume: CtVolume, candidate: np.ndarray, radiomics: RadiomicsConfig | None = None
) -> Findings:
    """Lung volume, LAA-950, mean lung density and P15 from the lung-density model's candidate mask, and with
    ``radiomics`` the IBSI features of the lung mask.

    ``candidate``: uint8, same (z, y, x) shape and order as ``volume.hu``.
    """
    try:
        lungs = extract_lungs(candidate, volume.spacing_mm)
        box = lung_box(lungs)  # the measurements read only the lungs' bounding box: the same numbers, a third the work
        measures = measure_lung_density(volume.hu[box], lungs[box], volume.spacing_mm)
    except NoLungFoundError as err:
        raise NotAnalyzableError(volume.study_uid, f"series {volume.series_uid}: {err}") from err
    # Radiomics is the slowest step and needs only the mask: it runs beside the rest (numpy and scipy release the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="radiomics") as pool:
        lung_features = (
            pool.submit(region_features, "lung", codes.LUNG_STRUCTURE, volume.hu, lungs, volume.spacing_mm, radiomics)
            if radiomics is not None
            else None
        )
        findings = _lung_density_findings(volume, lungs, measures, box)
        regions = [] if lung_features is None else [r for r in (lung_features.result(),) if r is not None]
    return replace(findings, radiomics=tuple(regions))


def _lung_density_findings(
    volume: CtVolume, lungs: npt.NDArray[np.bool_], measures: LungDensityMeasures, box: tuple[slice, slice, slice]
) -> Findings:
    emphysema = measures.laa950_percent >= codes.LAA950_EMPHYSEMA_THRESHOLD_PERCENT
    finding = emphysema_finding(volume, lungs, emphysema, box)
    z = (box[0].start or 0) + key_image_slice(lungs[box], volume.hu[box] if emphysema else None)
    if emphysema:
        conclusion = (
            f"Low-attenuation lung (LAA-950) {measures.laa950_percent:.1f} % of lung volume, at or above the "
            f"{codes.LAA950_EMPHYSEMA_THRESHOLD_PERCENT:g} % threshold: CT findings suggest emphysema"
            f"{_where(finding)}."
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
        key_image_title=_key_image_title(volume, z, emphysema),
        coded_findings=(finding,),
    )


ZONE_PREDOMINANCE_RATIO = 1.5
"""A lung zone (or side) predominates when its LAA-950 % is at least this many times the lowest zone's (side's)."""


def emphysema_finding(
    volume: CtVolume, lungs: npt.NDArray[np.bool_], present: bool, box: tuple[slice, slice, slice] | None = None
) -> CodedFinding:
    """Emphysema as a finding: present or absent, its size (volume below -950 HU) and, where there is low-attenuation
    lung, its location (the predominant lung zone) and laterality.

    ``lungs``: the lung mask, (z, y, x) like ``volume.hu``, in the volume's canonical frame (z towards the head,
    x towards the patient's left). Zones are thirds of the lungs' craniocaudal extent; the sides are split at the
    middle of the lungs' left-right extent. ``box``: the lungs' bounding box (``lung_box``), when already known.
    """
    box = lung_box(lungs) if box is None else box
    lungs = lungs[box]
    laa = lungs & (volume.hu[box] < LAA_THRESHOLD_HU)
    laa_voxels = int(np.count_nonzero(laa))
    size = Component(
        codes.LAA950_VOLUME, quantity=laa_voxels * volume.voxel_volume_ml, unit=codes.MILLILITRE, decimals=0
    )
    components = [size]
    if laa_voxels:
        components.append(Component(codes.FINDING_SITE, concept=_predominant_zone(lungs, laa)))
        components.append(Component(codes.LATERALITY, concept=_laterality(lungs, laa)))
    return CodedFinding(
        key=codes.EMPHYSEMA_FINDING_KEY,
        code=codes.PULMONARY_EMPHYSEMA,
        value=codes.PRESENT if present else codes.ABSENT,
        interpretation=codes.INTERPRETATION_ABNORMAL if present else codes.INTERPRETATION_NORMAL,
        components=tuple(components),
    )


def _predominant_zone(lungs: npt.NDArray[np.bool_], laa: npt.NDArray[np.bool_]) -> Code:
    """The upper, middle or lower third of the lungs with the highest LAA-950 %, if it predominates."""
    lung_per_slice = np.count_nonzero(lungs, axis=(1, 2))
    laa_per_slice = np.count_nonzero(laa, axis=(1, 2))
    slices = np.flatnonzero(lung_per_slice)
    bounds = np.linspace(slices[0], slices[-1] + 1, 4).round().astype(int)  # z grows towards the head
    zones = (
        (codes.LOWER_ZONE, slice(bounds[0], bounds[1])),
        (codes.MIDDLE_ZONE, slice(bounds[1], bounds[2])),
        (codes.UPPER_ZONE, slice(bounds[2], bounds[3])),
    )
    return _predominant([(code, laa_per_slice[z].sum(), lung_per_slice[z].sum()) for code, z in zones])


def _laterality(lungs: npt.NDArray[np.bool_], laa: npt.NDArray[np.bool_]) -> Code:
    """Right, left, or both: one side when its LAA-950 % predominates, else right and left."""
    lung_per_column = np.count_nonzero(lungs, axis=(0, 1))
    laa_per_column = np.count_nonzero(laa, axis=(0, 1))
    columns = np.flatnonzero(lung_per_column)
    middle = (int(columns[0]) + int(columns[-1]) + 1) // 2  # x grows towards the patient's left
    sides = [
        (codes.RIGHT, laa_per_column[:middle].sum(), lung_per_column[:middle].sum()),
        (codes.LEFT, laa_per_column[middle:].sum(), lung_per_column[middle:].sum()),
    ]
    found = _predominant(sides)
    return codes.RIGHT_AND_LEFT if found is codes.NO_ZONE_PREDOMINANCE else found


def _predominant(parts: list[tuple[Code, Any, Any]]) -> Code:
    """The part whose LAA-950 % (laa voxels / lung voxels) is ``ZONE_PREDOMINANCE_RATIO`` times the lowest part's."""
    percent = [100.0 * float(laa) / max(float(lung), 1.0) for _, laa, lung in parts]
    best = int(np.argmax(percent))
    if percent[best] >= ZONE_PREDOMINANCE_RATIO * min(percent) and percent[best] > 0:
        return parts[best][0]
    return codes.NO_ZONE_PREDOMINANCE


def _where(finding: CodedFinding) -> str:
    """', <zone>, <side>' in words for the conclusion, from the finding's location components."""
    words = {
        codes.UPPER_ZONE.code: "upper lung zone predominant",
        codes.MIDDLE_ZONE.code: "middle lung zone predominant",
        codes.LOWER_ZONE.code: "lower lung zone predominant",
        codes.NO_ZONE_PREDOMINANCE.code: "without zonal predominance",
        codes.RIGHT.code: "right lung",
        codes.LEFT.code: "left lung",
        codes.RIGHT_AND_LEFT.code: "both lungs",
    }
    parts = [words[c.concept.code] for c in finding.components if c.concept is not None]
    return "".join(f", {p}" for p in parts)


def _key_image_title(volume: CtVolume, z: int, emphysema: bool) -> str:
    position = volume.origin_lps_mm[2] + z * volume.spacing_mm[0]
    why = "most low-attenuation lung" if emphysema else "largest lung area"
    return (
        f"Key image: axial slice at z = {position:.1f} mm, {volume.hu.shape[0] - z} of {volume.hu.shape[0]} from "
        f"the top ({why}); lung outline cyan, lung below -950 HU amber"
    )


ANALYZERS: dict[str, Analyzer] = {"lung-density": lung_density_findings}
"""Slice models (no ``preprocessing``): manifest ``name`` -> post-processing of the (z, y, x) output."""

VolumeAnalyzer = Callable[[ModelManifest, CtVolume, ResampledOutput], Findings]
VOLUME_ANALYZERS: dict[str, VolumeAnalyzer] = {"lung-nodule-cad": nodule_findings}
"""Volume models (``preprocessing``: resampled, sliding windows): manifest ``name`` -> post-processing."""


def analyze_slices(model: ModelManifest, volume: CtVolume, output: np.ndarray) -> Findings:
    """The findings of a slice model's output (same (z, y, x) shape and order as ``volume.hu``)."""
    analyzer = ANALYZERS.get(model.name)
    if analyzer is not None:
        return analyzer(volume, output, radiomics=model.radiomics)
    if model.classification is not None:
        return classification_findings(model, volume, output)
    if model.segmentation is not None:
        return segmentation_findings(model, volume, output)
    raise ModelConfigurationError(f"model {model.name}: {NO_POST_PROCESSING}")


def analyze_volume(model: ModelManifest, volume: CtVolume, result: ResampledOutput) -> Findings:
    """The findings of a volume model's stitched output."""
    analyzer = VOLUME_ANALYZERS.get(model.name)
    if analyzer is None:
        raise ModelConfigurationError(f"model {model.name}: {NO_POST_PROCESSING}")
    return analyzer(model, volume, result)


NO_POST_PROCESSING = (
    "no post-processing for it: give its manifest a classification or a segmentation section (what its output "
    "means), or register an analyzer for its name in imaging_cds.analysis.findings"
)


def post_processing_problem(model: ModelManifest) -> str | None:
    """Why the worker could not chart ``model``'s output (None: it can); ``models check`` and worker start-up ask."""
    if model.preprocessing is None:
        known = model.name in ANALYZERS or model.classification is not None or model.segmentation is not None
    else:
        known = model.name in VOLUME_ANALYZERS
    return None if known else f"{model.path / 'manifest.yaml'}: {NO_POST_PROCESSING}"
