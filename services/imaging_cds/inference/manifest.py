"""Model manifests: what a model in ``triton_repo/`` needs and what its outputs mean.

A manifest (``triton_repo/<model>/manifest.yaml``) sits beside the model's ``config.pbtxt`` and ``1/model.onnx``, so
adding a model is a new folder, not a code change. It says which series the model accepts, how the worker feeds
it, and which result codings its measurements carry. An optional ``radiomics`` section asks for IBSI radiomics
features of each region the model segments: an IBSI reference configuration (``preset``, A-E) and the feature
``families``, any other field of :class:`~imaging_cds.analysis.radiomics.RadiomicsConfig` overriding the preset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imaging_cds.analysis.radiomics.config import RadiomicsConfig, config_from_mapping
from imaging_cds.dicomweb.rules import (
    AllOf,
    AnyOf,
    Condition,
    InRange,
    Missing,
    OneOf,
    RuleError,
    SeriesFacts,
    parse_condition,
    with_default_refusals,
)
from imaging_cds.imaging.quality import QualityLimits


class ManifestError(ValueError):
    """A manifest is missing or malformed; names the file and the field."""


@dataclass(frozen=True)
class SeriesRule:
    """Which series the model accepts (``accept``, see ``imaging_cds.dicomweb.rules``) and the checks its
    assembled volume must pass (``quality``, see ``imaging_cds.imaging.quality``)."""

    accept: Condition
    quality: QualityLimits = field(default_factory=QualityLimits)

    def failures(self, series: SeriesFacts) -> list[str]:
        """Why the rule rejects the series (empty: accepted); LOCALIZER/DERIVED/SECONDARY refused unless asked."""
        return with_default_refusals(self.accept).failures(series)

    def describe(self) -> str:
        return with_default_refusals(self.accept).describe()

    @property
    def max_slice_spacing_mm(self) -> float:
        return self.quality.max_slice_spacing_mm


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str  # KServe v2 datatype: INT16, UINT8, FP32...


@dataclass(frozen=True)
class ModelManifest:
    name: str
    title: str
    version: str  # the algorithm's version (Device.version); a change makes new results amendments
    triton_model: str
    triton_version: str
    task: str
    input: TensorSpec
    output: TensorSpec
    max_batch: int
    selection: SeriesRule
    path: Path
    radiomics: RadiomicsConfig | None = None  # IBSI features of each segmented region; None: none

    @property
    def onnx_path(self) -> Path:
        return self.path / self.triton_version / "model.onnx"


def load_manifest(model_dir: Path) -> ModelManifest:
    path = model_dir / "manifest.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ManifestError(f"{path}: no manifest; every model folder needs manifest.yaml") from err
    try:
        return _parse(raw, model_dir)
    except (KeyError, TypeError, ValueError, RuleError) as err:
        raise ManifestError(f"{path}: {err!r}; see triton_repo/README.md for the manifest fields") from err


def load_manifests(repository: Path) -> list[ModelManifest]:
    return [load_manifest(d) for d in sorted(repository.iterdir()) if (d / "manifest.yaml").exists()]


def _parse(raw: dict[str, Any], model_dir: Path) -> ModelManifest:
    triton = raw["triton"]
    sel = raw["selection"]
    return ModelManifest(
        name=str(raw["name"]),
        title=str(raw["title"]),
        version=str(raw["version"]),
        triton_model=str(triton["model_name"]),
        triton_version=str(triton["model_version"]),
        task=str(raw["task"]),
        input=TensorSpec(**triton["input"]),
        output=TensorSpec(**triton["output"]),
        max_batch=int(triton["max_batch_size"]),
        selection=parse_selection(sel),
        path=model_dir,
        radiomics=_radiomics(raw.get("radiomics")),
    )


def _radiomics(section: Any) -> RadiomicsConfig | None:
    if section is None:
        return None
    if not isinstance(section, dict):
        raise ValueError(f"radiomics: expected a mapping (preset, families...), got {section!r}")
    if "preset" not in section or "families" not in section:
        raise ValueError("radiomics: name the IBSI configuration (preset) and the feature families")
    return config_from_mapping(section)


def parse_selection(sel: dict[str, Any]) -> SeriesRule:
    """``selection:`` of a manifest: ``accept`` (a rule tree) and ``quality`` (limits), or the older flat form
    (``modalities``, ``body_parts``, ``min_instances``, ``max_slice_spacing_mm``)."""
    if "accept" in sel:
        quality = sel.get("quality") or {}
        unknown = set(quality) - set(QualityLimits.__dataclass_fields__)
        if unknown:
            raise ValueError(f"selection.quality: unknown {sorted(unknown)}")
        return SeriesRule(accept=parse_condition(sel["accept"], "selection.accept"), quality=QualityLimits(**quality))
    accept = AllOf(
        (
            OneOf("modality", tuple(m.upper() for m in sel["modalities"])),
            AnyOf((OneOf("body_part", tuple(b.upper() for b in sel["body_parts"])), Missing("body_part"))),
            InRange("n_images", float(sel["min_instances"]), None),
        )
    )
    quality = QualityLimits(
        min_slices=int(sel["min_instances"]), max_slice_spacing_mm=float(sel["max_slice_spacing_mm"])
    )
    return SeriesRule(accept=accept, quality=quality)
