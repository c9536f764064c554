"""Pulmonary nodule CAD results as findings a clinician reads: one coded finding per nodule, the conclusion in words,
and a key image through the most probable one.

Each nodule found becomes an Observation (``nodule-<rank>``, most probable first) coded as the model's manifest says
(``detection.codes``), valued Present, with its diameter, the model's probability, its centre in DICOM patient
coordinates and its side as components. With none found at or above the manifest's ``report_threshold``, one
finding says so (valued Absent), so the chart shows that the CAD ran and found nothing, not that it did not run.
"""

from __future__ import annotations

import numpy as np

from imaging_cds.analysis.lung_density import render_key_image
from imaging_cds.analysis.nodules import Nodule, find_nodules, lung_mask_of
from imaging_cds.errors import ModelConfigurationError
from imaging_cds.fhir import codes
from imaging_cds.fhir.codes import Code
from imaging_cds.fhir.report import CodedFinding, Component, Findings
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.manifest import DetectionSpec, ModelManifest
from imaging_cds.inference.windows import ResampledOutput


def nodule_findings(model: ModelManifest, volume: CtVolume, result: ResampledOutput) -> Findings:
    """Findings of a nodule detection model (``detection`` section in its manifest) from its stitched output."""
    detection = model.detection
    if detection is None or not detection.codes:
        raise ModelConfigurationError(f"model {model.name}: a detection model needs a detection section with codes")
    lungs = lung_mask_of(result) if detection.inside_lungs else None
    nodules = find_nodules(result, detection, volume.sop_uids, lungs, volume=volume)
    primary, *others = detection.codes
    midline_x = _midline_lps_x(result, lungs)
    found = tuple(
        _nodule_finding(rank, len(nodules), n, primary, tuple(others), midline_x)
        for rank, n in enumerate(nodules, start=1)
    )
    if not found:
        found = (
            CodedFinding(
                key=codes.NODULES_FINDING_KEY,
                code=primary,
                value=codes.ABSENT,
                interpretation=codes.INTERPRETATION_NORMAL,
                also_coded=tuple(others),
            ),
        )
    png, title = _key_image(volume, nodules)
    return Findings(
        series_uid=volume.series_uid,
        measurements=(),
        conclusion=_conclusion(nodules, detection, midline_x),
        conclusion_codes=(primary,) if nodules else (),
        key_image_png=png,
        key_image_title=title,
        coded_findings=found,
    )


def _nodule_finding(
    rank: int, count: int, n: Nodule, code: Code, also: tuple[Code, ...], midline_x: float | None
) -> CodedFinding:
    x, y, z = n.centre_lps_mm
    components = [
        Component(codes.DIAMETER, quantity=n.diameter_mm, unit=codes.MILLIMETRE, decimals=0),
        Component(codes.DETECTION_PROBABILITY, quantity=n.probability, unit=codes.PROBABILITY, decimals=2),
        Component(codes.CENTRE_LPS_X, quantity=x, unit=codes.MILLIMETRE, decimals=1),
        Component(codes.CENTRE_LPS_Y, quantity=y, unit=codes.MILLIMETRE, decimals=1),
        Component(codes.CENTRE_LPS_Z, quantity=z, unit=codes.MILLIMETRE, decimals=1),
    ]
    side = _side(n, midline_x)
    if side is not None:
        components.append(Component(codes.LATERALITY, concept=side))
    return CodedFinding(
        key=f"nodule-{rank}",
        code=code,
        value=codes.PRESENT,
        interpretation=codes.INTERPRETATION_ABNORMAL,
        components=tuple(components),
        also_coded=also,
        text=f"{code.display} {rank} of {count}",
    )


def _midline_lps_x(result: ResampledOutput, lungs: np.ndarray | None) -> float | None:
    """Patient x (LPS, mm) of the middle of the lungs' left-right extent; None without a lung mask or lungs."""
    if lungs is None or not lungs.any():
        return None
    columns = np.flatnonzero(lungs.any(axis=(0, 1)))
    rows = np.flatnonzero(lungs.any(axis=(0, 2)))
    slices = np.flatnonzero(lungs.any(axis=(1, 2)))
    middle = (
        float(slices[slices.size // 2]),
        float(rows[rows.size // 2]),
        (float(columns[0]) + float(columns[-1])) / 2.0,
    )
    return result.grid.lps_mm(middle)[0]


def _side(n: Nodule, midline_x: float | None) -> Code | None:
    if midline_x is None:
        return None
    return codes.LEFT if n.centre_lps_mm[0] > midline_x else codes.RIGHT  # LPS: x grows towards the patient's left


def _conclusion(nodules: list[Nodule], detection: DetectionSpec, midline_x: float | None) -> str:
    if not nodules:
        return (
            f"No pulmonary nodule candidate at or above the reporting threshold (probability "
            f"{detection.report_threshold:g}). CAD does not exclude nodules."
        )
    parts = []
    for n in nodules:
        side = _side(n, midline_x)
        where = f"{side.display.lower()} lung, " if side is not None else ""
        parts.append(
            f"{n.diameter_mm:.0f} mm ({where}z = {n.centre_lps_mm[2]:.1f} mm, probability {n.probability:.2f})"
        )
    noun = "candidate" if len(nodules) == 1 else "candidates"
    return f"{len(nodules)} pulmonary nodule {noun} for radiologist review: " + "; ".join(parts) + "."


def _key_image(volume: CtVolume, nodules: list[Nodule]) -> tuple[bytes, str]:
    """(PNG, title): the axial slice through the most probable nodule with a circle of its diameter around it;
    without nodules the middle slice, no outline."""
    rows, columns = int(volume.hu.shape[1]), int(volume.hu.shape[2])
    mask = np.zeros((rows, columns), dtype=bool)
    if not nodules:
        z = volume.hu.shape[0] // 2
        title = f"Key image: axial slice {volume.hu.shape[0] - z} of {volume.hu.shape[0]} from the top; no nodule found"
        return render_key_image(volume.hu[z], mask, laa_threshold=None, outline_legend="none"), title
    top = nodules[0]
    z = min(max(top.slice_index, 0), volume.hu.shape[0] - 1)
    _, cy, cx = top.centre_index_zyx
    radius_px = max(top.diameter_mm / 2.0 + 3.0, 5.0) / min(volume.spacing_mm[1], volume.spacing_mm[2])
    yy, xx = np.ogrid[:rows, :columns]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_px**2
    title = (
        f"Key image: axial slice {volume.hu.shape[0] - z} of {volume.hu.shape[0]} from the top, through the most "
        f"probable nodule ({top.diameter_mm:.0f} mm, probability {top.probability:.2f}), circled in cyan"
    )
    png = render_key_image(volume.hu[z], mask, laa_threshold=None, outline_legend="nodule candidate")
    return png, title
