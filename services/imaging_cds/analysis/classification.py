"""Findings of a classification model from its manifest alone: a hospital's own classifier, charted with no code.

The manifest's ``classification`` section (:class:`~imaging_cds.inference.manifest.ClassificationSpec`) says what
the output is: the probability of one finding per slice. The series' probability (the slices' ``max`` or ``mean``)
becomes one coded finding, Present at or above the threshold (interpretation abnormal) and Absent below it, with
the probability as a component; the key image is the slice the model scored highest.
"""

from __future__ import annotations

import numpy as np

from imaging_cds.analysis.lung_density import render_key_image
from imaging_cds.errors import ModelConfigurationError
from imaging_cds.fhir import codes
from imaging_cds.fhir.report import CodedFinding, Component, Findings
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.manifest import ModelManifest


def classification_findings(model: ModelManifest, volume: CtVolume, output: np.ndarray) -> Findings:
    """``output``: the model's per-slice probabilities, ``(slices,)`` or ``(slices, 1)``, in ``volume``'s order."""
    spec = model.classification
    if spec is None:
        raise ModelConfigurationError(f"model {model.name}: no classification section in its manifest")
    scores = np.asarray(output, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1 or scores.shape[0] != volume.hu.shape[0]:
        raise ModelConfigurationError(
            f"model {model.name}: output of shape {output.shape}; a classification model gives one probability per "
            f"slice ({volume.hu.shape[0]} slices), shape (slices,) or (slices, 1)"
        )
    if not np.all(np.isfinite(scores)) or scores.min() < 0.0 or scores.max() > 1.0:
        raise ModelConfigurationError(
            f"model {model.name}: study {volume.study_uid}: outputs outside [0, 1] or not finite; a probability "
            "was expected, nothing is charted"
        )
    probability = float(scores.max() if spec.aggregate == "max" else scores.mean())
    present = probability >= spec.threshold
    primary, *others = spec.codes
    finding = CodedFinding(
        key=model.name,
        code=primary,
        value=codes.PRESENT if present else codes.ABSENT,
        interpretation=codes.INTERPRETATION_ABNORMAL if present else codes.INTERPRETATION_NORMAL,
        components=(Component(codes.DETECTION_PROBABILITY, quantity=probability, unit=codes.PROBABILITY, decimals=2),),
        body_site=spec.body_site,
        also_coded=tuple(others),
    )
    z = int(np.argmax(scores))
    verdict = "present" if present else "absent"
    conclusion = (
        f"{primary.display}: {verdict} (probability {probability:.2f} by the slices' {spec.aggregate}, threshold "
        f"{spec.threshold:g})."
    )
    title = (
        f"Key image: axial slice {volume.hu.shape[0] - z} of {volume.hu.shape[0]} from the top, the one "
        f"{model.title} scored highest ({scores[z]:.2f})"
    )
    png = render_key_image(volume.hu[z], np.zeros(volume.hu.shape[1:], dtype=bool), None, outline_legend="none")
    return Findings(
        series_uid=volume.series_uid,
        measurements=(),
        conclusion=conclusion,
        conclusion_codes=(primary,) if present else (),
        key_image_png=png,
        key_image_title=title,
        coded_findings=(finding,),
    )
