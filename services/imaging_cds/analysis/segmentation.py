"""Findings of a segmentation model from its manifest alone: a hospital's own model, charted with no code.

The manifest's ``segmentation`` section (:class:`~imaging_cds.inference.manifest.SegmentationSpec`) says what the
output is: a label map with the CT's ``(slices, rows, columns)`` shape, 0 for background and each declared value
one structure, with its anatomy code and the measurements to report. Each structure becomes one coded finding:
Present with its measurements as components (volume in mL; mean and standard deviation of its CT numbers in HU),
or Absent, with no number, when the model labelled less than ``min_volume_ml`` of it. A label value the manifest
does not declare means the manifest and the model disagree: nothing is charted, and the error says which values.
With a ``radiomics`` section each structure found also gets its IBSI features. The key image is the slice with the
most labelled voxels, the structures outlined.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from imaging_cds.analysis.lung_density import render_key_image
from imaging_cds.errors import ModelConfigurationError
from imaging_cds.fhir import codes
from imaging_cds.fhir.report import CodedFinding, Component, Findings, RegionFeatures
from imaging_cds.imaging.volume import CtVolume
from imaging_cds.inference.manifest import MAX_LABEL_VALUE, ModelManifest, SegmentLabel


def segmentation_findings(model: ModelManifest, volume: CtVolume, output: np.ndarray) -> Findings:
    """``output``: the model's label map, the shape of ``volume.hu`` and in its (z, y, x) order."""
    spec = model.segmentation
    if spec is None:
        raise ModelConfigurationError(f"model {model.name}: no segmentation section in its manifest")
    label_map = np.asarray(output)
    if label_map.shape != volume.hu.shape:
        raise ModelConfigurationError(
            f"model {model.name}: study {volume.study_uid}: output of shape {label_map.shape}; a segmentation "
            f"model gives one label per voxel, shape {volume.hu.shape}; nothing is charted"
        )
    counts = _label_counts(model, volume, label_map)
    voxel_ml = math.prod(volume.spacing_mm) / 1000.0
    found: list[int] = []
    findings: list[CodedFinding] = []
    parts: list[str] = []
    regions: list[RegionFeatures] = []
    per_slice = np.zeros(label_map.shape[0], dtype=np.intp)  # voxels of the structures found, slice by slice
    for label in spec.labels:
        site = label.site
        volume_ml = counts[label.value] * voxel_ml
        if counts[label.value] == 0 or volume_ml < spec.min_volume_ml:
            findings.append(CodedFinding(key=label.key, code=site, value=codes.ABSENT, body_site=site))
            parts.append(f"{site.display} not found (under {spec.min_volume_ml:g} mL)")
            continue
        mask = label_map == label.value
        per_slice += mask.sum(axis=(1, 2))
        components = _measurements(label, volume.hu[mask], volume_ml)
        findings.append(
            CodedFinding(
                key=label.key,
                code=site,
                value=codes.PRESENT,
                components=components,
                body_site=site,
                text=f"{site.display}, segmented by {model.title}",
            )
        )
        parts.append(f"{site.display} {volume_ml:.1f} mL")
        found.append(label.value)
        if model.radiomics is not None:
            from imaging_cds.analysis.findings import region_features  # the radiomics engine, only when asked for

            features = region_features(label.key, site, volume.hu, mask, volume.spacing_mm, model.radiomics)
            regions.extend([features] if features is not None else [])
    z = int(np.argmax(per_slice)) if found else label_map.shape[0] // 2  # else the middle slice
    outlined = np.isin(label_map[z], found) if found else np.zeros(label_map.shape[1:], dtype=bool)
    png = render_key_image(volume.hu[z], outlined, None, outline_legend="segmented structures")
    return Findings(
        series_uid=volume.series_uid,
        measurements=(),
        conclusion=f"{model.title}: " + "; ".join(parts) + ".",
        conclusion_codes=(),
        key_image_png=png,
        key_image_title=(
            f"Key image: axial slice {volume.hu.shape[0] - z} of {volume.hu.shape[0]} from the top, the one with the "
            f"most segmented voxels"
            if found
            else f"Key image: axial slice {volume.hu.shape[0] - z} of {volume.hu.shape[0]} (nothing segmented)"
        ),
        radiomics=tuple(regions),
        coded_findings=tuple(findings),
    )


def _label_counts(model: ModelManifest, volume: CtVolume, label_map: npt.NDArray[np.generic]) -> npt.NDArray[np.intp]:
    """Voxels per label value; ModelConfigurationError when the map holds values the manifest does not declare."""
    assert model.segmentation is not None
    declared = {label.value for label in model.segmentation.labels}
    problem = ""
    if not np.issubdtype(label_map.dtype, np.integer):
        problem = f"a label map of integers was expected, got {label_map.dtype}"
    elif label_map.size and (int(label_map.min()) < 0 or int(label_map.max()) > MAX_LABEL_VALUE):
        problem = f"label values from {int(label_map.min())} to {int(label_map.max())}, outside 0-{MAX_LABEL_VALUE}"
    else:
        counts = np.bincount(label_map.ravel().astype(np.intp, copy=False), minlength=max(declared) + 1)
        unknown = sorted(set(np.flatnonzero(counts).tolist()) - declared - {0})
        if not unknown:
            return counts
        problem = f"label values {unknown} are not in the manifest's segmentation.labels {sorted(declared)}"
    raise ModelConfigurationError(
        f"model {model.name}: study {volume.study_uid}: {problem}; the manifest does not describe this model's "
        "output, nothing is charted"
    )


def _measurements(label: SegmentLabel, hu: npt.NDArray[np.generic], volume_ml: float) -> tuple[Component, ...]:
    values = np.asarray(hu, dtype=np.float64)
    measured = {
        "volume": volume_ml,
        "mean": float(values.mean()),
        "standard_deviation": float(values.std()),
    }
    out = []
    for name in label.measurements:
        how = codes.REGION_MEASURES[name]
        out.append(Component(how.code, quantity=measured[name], unit=how.unit, decimals=how.decimals))
    return tuple(out)
