"""Pulmonary nodule findings from the ``lung-nodule-cad`` model's output (computer-aided detection).

The model (``triton_repo/lung-nodule-cad``) gives, for every voxel of a CT resampled to 2 mm, a nodule probability
and an estimated diameter (:mod:`imaging_cds.inference.windows` runs it window by window and stitches the output).
:func:`find_nodules` turns that map into findings: the voxels at or above the manifest's ``report_threshold`` are
grouped into 3D connected regions; each region is one candidate, placed at the centroid of its most probable voxels
(those within 0.02 of its peak probability, so a saturated plateau is centred), with the peak probability and the
median diameter over those voxels. :func:`measure_diameter` then sizes each candidate on the CT itself: the voxels
above ``SIZE_THRESHOLD_HU`` connected to the centre, within 1.5 (or 2.5) times the model's radius estimate, as the
diameter of the sphere of the same volume (the model's estimate is kept when that region is empty or runs into the
limit, i.e. is not a closed blob). Candidates outside the lungs are dropped (when ``inside_lungs``), then
non-maximum suppression keeps a candidate only if no more probable one lies within ``min_separation_mm`` or within
the larger one's radius; at most ``max_findings`` remain, most probable first.

Coordinates: ``centre_lps_mm`` is DICOM patient LPS in mm; ``centre_index_zyx`` and ``slice_index`` index the
:class:`~imaging_cds.imaging.volume.CtVolume` the model was run on (axis 0 of ``volume.hu``, whose instance is
``volume.sop_uids[slice_index]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from imaging_cds.analysis.lung_density import extract_lungs
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.backend import InferenceBackend
from imaging_cds.inference.manifest import DetectionSpec, ModelManifest
from imaging_cds.inference.windows import ResampledOutput, infer_volume

__all__ = [
    "LUNG_CANDIDATE_HU",
    "SIZE_THRESHOLD_HU",
    "Nodule",
    "detect_nodules",
    "find_nodules",
    "lung_mask_of",
    "measure_diameter",
    "suppress_neighbours",
]

LUNG_CANDIDATE_HU = -400
"""Air-like voxels (below this HU) are lung candidates for the lung mask, as in the lung-density model."""
SIZE_THRESHOLD_HU = -700
"""Nodule tissue for sizing: halfway between aerated lung (about -850 HU) and ground glass (-650 HU and above)."""
_SIZE_REACH = (1.5, 2.5)  # the sizing region is limited to this many times the model's radius estimate...
_SIZE_MIN_REACH_MM = 6.0  # ...and at least this radius
_SIZE_MAX_LEAK = 0.3  # more than this fraction of the limiting sphere's surface dense: not a closed blob
_PEAK_TOLERANCE = 0.02
"""Voxels within this probability of a region's peak are its centre (a saturated plateau is centred, not cornered)."""


@dataclass(frozen=True)
class Nodule:
    """One pulmonary nodule found by the CAD model.

    ``centre_lps_mm``: centre in patient coordinates (LPS, mm). ``diameter_mm``: diameter of the sphere of the
    same volume (:func:`measure_diameter`), or the model's estimate where the nodule cannot be delimited.
    ``probability``: the model's calibrated probability that a nodule is there, in [0, 1].
    ``slice_index``: nearest axial slice (axis 0 of the CtVolume), ``sop_uid`` its instance.
    ``centre_index_zyx``: the centre in the CtVolume's (z, y, x) index space (fractional).
    """

    centre_lps_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float
    slice_index: int
    sop_uid: str
    centre_index_zyx: tuple[float, float, float]


def measure_diameter(
    hu: np.ndarray, spacing_mm: tuple[float, float, float], centre_zyx: tuple[float, float, float], estimate_mm: float
) -> float | None:
    """Equivalent-sphere diameter (mm) of the nodule at ``centre_zyx`` (fractional (z, y, x) index of ``hu``).

    The region is the voxels above ``SIZE_THRESHOLD_HU`` connected to the voxel nearest the centre, inside a sphere of
    ``max(1.5 x estimate / 2, 6 mm)``, or of ``2.5 x estimate / 2`` when the first runs into its limit (the model
    underestimates some large nodules). None when the centre voxel is not dense or the region still covers more than
    30 % of the limiting sphere's surface (a vessel or the chest wall runs through: the estimate is the better size).
    """
    for reach_factor in _SIZE_REACH:
        reach = max(reach_factor * estimate_mm / 2.0, _SIZE_MIN_REACH_MM)
        lo = [max(math.floor(c - reach / s) - 1, 0) for c, s in zip(centre_zyx, spacing_mm, strict=True)]
        hi = [min(math.ceil(c + reach / s) + 2, n) for c, s, n in zip(centre_zyx, spacing_mm, hu.shape, strict=True)]
        box = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        if box.size == 0:
            return None
        zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        distance = np.sqrt(
            ((zz - centre_zyx[0]) * spacing_mm[0]) ** 2
            + ((yy - centre_zyx[1]) * spacing_mm[1]) ** 2
            + ((xx - centre_zyx[2]) * spacing_mm[2]) ** 2
        )
        inside = distance <= reach
        dense = (box > SIZE_THRESHOLD_HU) & inside
        seed = tuple(min(max(round(c) - low, 0), n - 1) for c, low, n in zip(centre_zyx, lo, box.shape, strict=True))
        if not dense[seed]:
            return None
        labels, _ = ndimage.label(dense)
        region = labels == labels[seed]
        shell = inside & (distance > reach - max(spacing_mm))
        if np.count_nonzero(region & shell) <= _SIZE_MAX_LEAK * np.count_nonzero(shell):
            volume_mm3 = float(np.count_nonzero(region)) * math.prod(spacing_mm)
            return float((6.0 * volume_mm3 / math.pi) ** (1.0 / 3.0))
    return None


def lung_mask_of(result: ResampledOutput) -> np.ndarray:
    """The lungs on the model's grid (bool ``(z, y, x)``), vessels and nodules inside them included, grown by one
    voxel so that a nodule centre on the lung's edge still counts: ``extract_lungs`` of the air-like voxels."""
    lungs = extract_lungs(result.hu < LUNG_CANDIDATE_HU, result.grid.spacing_mm)
    return np.asarray(ndimage.binary_dilation(lungs, iterations=1))


def _candidates(
    result: ResampledOutput,
    detection: DetectionSpec,
    lung_mask: np.ndarray | None,
    sop_uids: tuple[str, ...],
    volume: CtVolume | None,
) -> list[Nodule]:
    p_channel = detection.channel("probability")
    d_channel = detection.channel("diameter_mm")
    probability = result.output[p_channel].astype(np.float32) * np.float32(detection.channels[p_channel].scale)
    above = probability >= np.float32(detection.report_threshold)
    labels, count = ndimage.label(above, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return []
    found: list[Nodule] = []
    grid = result.grid
    low, high = detection.diameter_mm
    n_slices = len(sop_uids)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == index
        p = np.where(region, probability[box], 0.0)
        peak = float(p.max())
        core = p >= peak - _PEAK_TOLERANCE
        zz, yy, xx = np.nonzero(core)
        centre = (
            float(zz.mean()) + box[0].start,
            float(yy.mean()) + box[1].start,
            float(xx.mean()) + box[2].start,
        )
        nearest = tuple(min(max(round(c), 0), n - 1) for c, n in zip(centre, grid.shape, strict=True))
        if lung_mask is not None and not lung_mask[nearest]:
            continue
        diameters = result.output[d_channel][box][core].astype(np.float32) * detection.channels[d_channel].scale
        diameter = float(np.median(diameters))
        source = grid.source_index(centre)
        if volume is not None:
            measured = measure_diameter(volume.hu, volume.spacing_mm, source, diameter)
            diameter = diameter if measured is None else measured
        diameter = min(max(diameter, low), high)
        slice_index = min(max(round(source[0]), 0), n_slices - 1)
        found.append(
            Nodule(
                centre_lps_mm=grid.lps_mm(centre),
                diameter_mm=round(diameter, 2),
                probability=round(peak, 4),
                slice_index=slice_index,
                sop_uid=sop_uids[slice_index] if sop_uids else "",
                centre_index_zyx=(round(source[0], 2), round(source[1], 2), round(source[2], 2)),
            )
        )
    return found


def suppress_neighbours(candidates: list[Nodule], min_separation_mm: float, max_findings: int) -> list[Nodule]:
    """Most probable first; a candidate is dropped when a kept one lies closer than ``min_separation_mm`` or than
    the larger of the two radii (one nodule seen twice). At most ``max_findings`` are returned."""
    kept: list[Nodule] = []
    for candidate in sorted(candidates, key=lambda n: (-n.probability, -n.diameter_mm, n.centre_lps_mm)):
        here = np.asarray(candidate.centre_lps_mm)
        if all(
            float(np.linalg.norm(here - np.asarray(k.centre_lps_mm)))
            >= max(min_separation_mm, candidate.diameter_mm / 2.0, k.diameter_mm / 2.0)
            for k in kept
        ):
            kept.append(candidate)
            if len(kept) == max_findings:
                break
    return kept


def find_nodules(
    result: ResampledOutput,
    detection: DetectionSpec,
    sop_uids: tuple[str, ...],
    lung_mask: np.ndarray | None = None,
    volume: CtVolume | None = None,
) -> list[Nodule]:
    """Findings from a stitched model output (see the module docstring), most probable first.

    ``lung_mask``: bool ``(z, y, x)`` on the output's grid; None means no lung restriction. ``sop_uids``: the CT's
    instance of each z slice (``CtVolume.sop_uids``), to name the slice of each finding. ``volume``: the CT the
    model ran on, to size each finding on its HU (None: the model's diameter estimate).
    """
    if lung_mask is not None and lung_mask.shape != result.output.shape[1:]:
        raise ValueError(f"lung_mask {lung_mask.shape} must have the output grid's shape {result.output.shape[1:]}")
    candidates = _candidates(result, detection, lung_mask, sop_uids, volume)
    return suppress_neighbours(candidates, detection.min_separation_mm, detection.max_findings)


def detect_nodules(volume: CtVolume, model: ModelManifest, backend: InferenceBackend) -> list[Nodule]:
    """Pulmonary nodules in ``volume``: resample and run ``model`` window by window on ``backend``, then
    :func:`find_nodules` (restricted to the lungs when the manifest says ``inside_lungs``).

    Raises :class:`NotAnalyzableError` (naming the study) when the manifest has no ``detection`` section.
    """
    if model.detection is None:
        raise NotAnalyzableError(
            volume.study_uid, f"model {model.name} has no detection section in its manifest; it finds no nodules"
        )
    result = infer_volume(volume, model, backend)
    mask = lung_mask_of(result) if model.detection.inside_lungs else None
    return find_nodules(result, model.detection, volume.sop_uids, mask, volume)
