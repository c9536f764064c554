"""Model manifests: what a model in ``triton_repo/`` needs and what its outputs mean.

A manifest (``triton_repo/<model>/manifest.yaml``) sits beside the model's ``config.pbtxt`` and ``1/model.onnx``, so
adding a model is a new folder, not a code change. It says which series the model accepts, how the worker feeds
it, and which result codings its measurements carry. An optional ``radiomics`` section asks for IBSI radiomics
features of each region the model segments: an IBSI reference configuration (``preset``, A-E) and the feature
``families``, any other field of :class:`~imaging_cds.analysis.radiomics.RadiomicsConfig` overriding the preset.

Two more optional sections serve models that see the volume rather than slices (e.g. ``lung-nodule-cad``):
``preprocessing`` (resample to a fixed spacing, then cut into overlapping windows: :class:`Preprocessing`) and
``detection`` (what the output channels mean, the finding's codes, the reporting threshold: :class:`DetectionSpec`).

A hospital's own slice model is charted from its manifest alone with either of two sections: ``classification``
(a per-slice probability of one finding: :class:`ClassificationSpec`) or ``segmentation`` (a label map: each label
value's anatomy codes and the measurements to report: :class:`SegmentationSpec`).
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
from imaging_cds.fhir.codes import Code
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
class SlidingWindow:
    """How a resampled volume is cut into model inputs: windows of at most ``size`` voxels (z, y, x), neighbours
    sharing ``overlap`` voxels per axis, of which each window keeps only its own half (the centre crop). Every window
    of a volume has one shape; sizes and starts are multiples of ``multiple_of`` per axis (a model that pools by that
    factor sees the same grid in every window); the volume's end is edge-padded where the last window reaches past
    it."""

    size: tuple[int, int, int]
    overlap: tuple[int, int, int]
    multiple_of: int = 1


@dataclass(frozen=True)
class Preprocessing:
    """What the worker does to a CT volume before inference (the model's own HU window is inside the graph).

    ``spacing_mm``: (z, y, x) spacing the volume is resampled to (``interpolation``: ``linear``).
    ``hu_window``: the HU range the model clips to, stated for readers; the worker sends HU unchanged.
    ``window``: the sliding window. ``crop_to_body_hu``: when set, the in-plane box of voxels above this HU (the body)
    is cut out before windows are made, so air around the patient costs nothing."""

    spacing_mm: tuple[float, float, float]
    window: SlidingWindow
    interpolation: str = "linear"
    hu_window: tuple[float, float] | None = None
    crop_to_body_hu: float | None = None


FindingCode = Code
"""A coding the manifest gives a finding or a site (RadElement, RadLex, SNOMED CT): charted as it stands."""


@dataclass(frozen=True)
class OutputChannel:
    """One channel of a detection model's output: value = stored * ``scale`` (in ``unit``)."""

    name: str
    scale: float
    unit: str = "1"


@dataclass(frozen=True)
class DetectionSpec:
    """What a detection model's output means and which findings are reported.

    ``channels``: the output's channels in order (axis 1). ``codes``: the finding's codings (RadElement, RadLex,
    SNOMED CT). ``report_threshold``: findings below this probability are not reported. ``max_findings``: at most
    this many per series, most probable first. ``min_separation_mm``: two findings closer than this (centre to
    centre, or within the larger one's radius) are one. ``diameter_mm``: reported sizes are clamped to this range.
    ``inside_lungs``: findings must lie inside the lungs."""

    channels: tuple[OutputChannel, ...]
    codes: tuple[FindingCode, ...]
    report_threshold: float
    max_findings: int
    min_separation_mm: float
    diameter_mm: tuple[float, float]
    inside_lungs: bool = True

    def channel(self, name: str) -> int:
        """Index of the channel called ``name``; ValueError naming the channels there are."""
        for index, channel in enumerate(self.channels):
            if channel.name == name:
                return index
        raise ValueError(f"detection.channels has no {name!r}; it has {[c.name for c in self.channels]}")


@dataclass(frozen=True)
class ClassificationSpec:
    """What a classification model's output means, so a hospital's own classifier is charted with no code change.

    The output holds, per slice, the probability of one finding (``(slices, 1)`` or ``(slices,)``); ``aggregate``
    (``max`` or ``mean``) turns it into the series' probability. At or above ``threshold`` the finding is reported
    present (interpretation abnormal), below it absent. ``codes``: the finding's codings (SNOMED CT, RadLex,
    RadElement), the first being the Observation's primary one; ``body_site``: where (default: none stated)."""

    codes: tuple[FindingCode, ...]
    threshold: float
    aggregate: str = "max"
    body_site: FindingCode | None = None


REGION_MEASUREMENTS = ("volume", "mean", "standard_deviation")
"""What a ``segmentation`` label may ask to report of its region: its volume (mL), and the mean and standard
deviation of its CT numbers (HU). Their codes are ``imaging_cds.fhir.codes.REGION_MEASURES``."""

MAX_LABEL_VALUE = 65535
_LABEL_DATATYPES = ("UINT8", "UINT16", "INT8", "INT16", "INT32", "INT64")
_KEY_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class SegmentLabel:
    """One label value of a segmentation model's output: ``key`` names its results in identifiers (lower-case
    letters, digits and '-'; stable across model versions), ``site`` is the structure's anatomy code (SNOMED CT,
    RadLex), ``measurements`` what to report of it (names from :data:`REGION_MEASUREMENTS`)."""

    value: int
    key: str
    site: FindingCode
    measurements: tuple[str, ...]


@dataclass(frozen=True)
class SegmentationSpec:
    """What a segmentation model's output means, so a hospital's own model is charted with no code change.

    The output is a label map with the input's ``(slices, rows, columns)`` shape: 0 is background, every other value
    one of ``labels``. A labelled structure smaller than ``min_volume_ml`` is reported as not found, with no
    measurement."""

    labels: tuple[SegmentLabel, ...]
    min_volume_ml: float = 1.0


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
    preprocessing: Preprocessing | None = None  # volume models: resampling and sliding windows; None: per slice
    detection: DetectionSpec | None = None  # detection models: output channels, codes, reporting threshold
    classification: ClassificationSpec | None = None  # classifiers: the finding, its codes and threshold
    segmentation: SegmentationSpec | None = None  # label maps: each label's anatomy and measurements

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
    manifest = ModelManifest(
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
        preprocessing=_preprocessing(raw.get("preprocessing")),
        detection=_detection(raw.get("detection")),
        classification=_classification(raw.get("classification")),
        segmentation=_segmentation(raw.get("segmentation")),
    )
    if manifest.segmentation is not None:
        if manifest.preprocessing is not None or manifest.classification is not None:
            raise ValueError(
                "segmentation: a slice model's label map; it cannot be combined with preprocessing (a volume model) "
                "or classification"
            )
        if manifest.output.datatype not in _LABEL_DATATYPES:
            raise ValueError(
                f"segmentation: the output is a label map, so triton.output.datatype must be one of "
                f"{list(_LABEL_DATATYPES)}, got {manifest.output.datatype!r}"
            )
    return manifest


def _triple(value: Any, where: str, kind: type[int] | type[float]) -> Any:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError(f"{where}: expected three numbers (z, y, x), got {value!r}")
    numbers = tuple(kind(v) for v in value)
    if any(v <= 0 for v in numbers):
        raise ValueError(f"{where}: every value must be positive, got {value!r}")
    return numbers


def _mapping(section: Any, where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected a mapping, got {section!r}")
    return section


def _preprocessing(section: Any) -> Preprocessing | None:
    if section is None:
        return None
    raw = _mapping(section, "preprocessing")
    resample = _mapping(raw.get("resample"), "preprocessing.resample")
    interpolation = str(resample.get("interpolation", "linear"))
    if interpolation != "linear":
        raise ValueError(f"preprocessing.resample.interpolation: only 'linear' is supported, got {interpolation!r}")
    sliding = _mapping(raw.get("sliding_window"), "preprocessing.sliding_window")
    size = _triple(sliding.get("size"), "preprocessing.sliding_window.size", int)
    overlap = tuple(int(v) for v in sliding.get("overlap", (0, 0, 0)))
    if len(overlap) != 3 or any(o < 0 or o >= s for o, s in zip(overlap, size, strict=True)):
        raise ValueError(
            f"preprocessing.sliding_window.overlap: three voxel counts, each at least 0 and below the window size "
            f"{size}, got {sliding.get('overlap')!r}"
        )
    multiple = int(sliding.get("multiple_of", 1))
    if multiple < 1 or any(s % multiple for s in size):
        raise ValueError(f"preprocessing.sliding_window.multiple_of {multiple} must be >= 1 and divide size {size}")
    hu_window = raw.get("hu_window")
    crop = raw.get("crop_to_body_hu")
    return Preprocessing(
        spacing_mm=_triple(resample.get("spacing_mm"), "preprocessing.resample.spacing_mm", float),
        window=SlidingWindow(size=size, overlap=(overlap[0], overlap[1], overlap[2]), multiple_of=multiple),
        interpolation=interpolation,
        hu_window=None if hu_window is None else (float(hu_window[0]), float(hu_window[1])),
        crop_to_body_hu=None if crop is None else float(crop),
    )


def _detection(section: Any) -> DetectionSpec | None:
    if section is None:
        return None
    raw = _mapping(section, "detection")
    channels = tuple(
        OutputChannel(name=str(c["name"]), scale=float(c["scale"]), unit=str(c.get("unit", "1")))
        for c in raw["channels"]
    )
    if not channels:
        raise ValueError("detection.channels: name at least one output channel")
    codes = tuple(_finding_code(c, "detection.codes[]") for c in raw["codes"])
    threshold = float(raw["report_threshold"])
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"detection.report_threshold: a probability in [0, 1], got {threshold}")
    low, high = (float(v) for v in raw["diameter_mm"])
    if not 0.0 <= low < high:
        raise ValueError(f"detection.diameter_mm: [low, high] with 0 <= low < high, got {raw['diameter_mm']!r}")
    spec = DetectionSpec(
        channels=channels,
        codes=codes,
        report_threshold=threshold,
        max_findings=int(raw["max_findings"]),
        min_separation_mm=float(raw.get("min_separation_mm", 0.0)),
        diameter_mm=(low, high),
        inside_lungs=bool(raw.get("inside_lungs", True)),
    )
    if spec.max_findings < 1:
        raise ValueError(f"detection.max_findings: at least 1, got {spec.max_findings}")
    return spec


def _finding_code(raw: Any, where: str) -> FindingCode:
    item = _mapping(raw, where)
    return FindingCode(system=str(item["system"]), code=str(item["code"]), display=str(item["display"]))


def _classification(section: Any) -> ClassificationSpec | None:
    if section is None:
        return None
    raw = _mapping(section, "classification")
    codes = tuple(_finding_code(c, "classification.codes[]") for c in raw["codes"])
    if not codes:
        raise ValueError("classification.codes: give at least one coding of the finding")
    threshold = float(raw["threshold"])
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"classification.threshold: a probability in [0, 1], got {threshold}")
    aggregate = str(raw.get("aggregate", "max"))
    if aggregate not in ("max", "mean"):
        raise ValueError(f"classification.aggregate: max or mean, got {aggregate!r}")
    site = raw.get("body_site")
    return ClassificationSpec(
        codes=codes,
        threshold=threshold,
        aggregate=aggregate,
        body_site=_finding_code(site, "classification.body_site") if site is not None else None,
    )


def _segmentation(section: Any) -> SegmentationSpec | None:
    if section is None:
        return None
    raw = _mapping(section, "segmentation")
    entries = raw.get("labels")
    if not isinstance(entries, list) or not entries:
        raise ValueError("segmentation.labels: list each label value the model gives (value, key, site)")
    labels = []
    for entry in entries:
        item = _mapping(entry, "segmentation.labels[]")
        value, key = int(item["value"]), str(item["key"])
        where = f"segmentation.labels[{key}]"
        if not 1 <= value <= MAX_LABEL_VALUE:
            raise ValueError(f"{where}.value: 1 to {MAX_LABEL_VALUE} (0 is background), got {value}")
        if not key or not set(key) <= _KEY_CHARACTERS:
            raise ValueError(f"{where}.key: lower-case letters, digits and '-' (it names results), got {key!r}")
        measurements = tuple(str(m) for m in item.get("measurements", ("volume",)))
        unknown = [m for m in measurements if m not in REGION_MEASUREMENTS]
        if unknown or len(set(measurements)) != len(measurements):
            raise ValueError(
                f"{where}.measurements: each once, from {list(REGION_MEASUREMENTS)}; got {list(measurements)}"
            )
        labels.append(SegmentLabel(value, key, _finding_code(item["site"], f"{where}.site"), measurements))
    for name, values in (("value", [lab.value for lab in labels]), ("key", [lab.key for lab in labels])):
        if len(set(values)) != len(values):
            raise ValueError(f"segmentation.labels: each {name} once, got {values}")
    min_volume = float(raw.get("min_volume_ml", 1.0))
    if min_volume < 0.0:
        raise ValueError(f"segmentation.min_volume_ml: 0 or more, got {min_volume}")
    return SegmentationSpec(labels=tuple(labels), min_volume_ml=min_volume)


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
