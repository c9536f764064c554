"""IBSI image processing configuration: what happens to an image and its ROI before features are computed.

The fields follow the IBSI 1 processing steps, in order: interpolation (spacing, image and ROI interpolators,
intensity rounding, ROI partial-volume threshold), re-segmentation (range, outlier filtering), discretisation (for
the histogram and texture families, and separately for the intensity-volume histogram), then which texture
aggregations to report. ``IBSI_CONFIGURATIONS`` holds the reference configurations of the IBSI CT phantom (A-E) and
the digital phantom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from imaging_cds.analysis.radiomics.features import FAMILIES

__all__ = [
    "IBSI_CONFIGURATIONS",
    "ConfigError",
    "Discretisation",
    "RadiomicsConfig",
    "config_from_mapping",
]

Interpolator = Literal["nearest", "linear", "cubic"]
INTERPOLATION_ORDER: dict[str, int] = {"nearest": 0, "linear": 1, "cubic": 3}
DIMS = ("2D", "2.5D", "3D")


class ConfigError(ValueError):
    """A radiomics configuration that IBSI processing cannot follow; says which field and why."""


@dataclass(frozen=True)
class Discretisation:
    """``fbs``: fixed bin size ``value`` (intensity units); ``fbn``: fixed bin number ``value``; ``none``."""

    method: Literal["none", "fbs", "fbn"]
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in ("none", "fbs", "fbn"):
            raise ConfigError(f"discretisation method {self.method!r}: expected none, fbs or fbn")
        if self.method != "none" and not self.value > 0:
            raise ConfigError(f"discretisation {self.method}: bin size or number must be > 0, got {self.value}")
        if self.method == "fbn" and not float(self.value).is_integer():
            raise ConfigError(f"fixed bin number must be a whole number, got {self.value}")

    def describe(self) -> str:
        if self.method == "fbs":
            return f"fixed bin size {self.value:g}"
        if self.method == "fbn":
            return f"fixed bin number {int(self.value)}"
        return "none"


@dataclass(frozen=True)
class RadiomicsConfig:
    """One IBSI processing configuration.

    ``spacing_mm`` is the new voxel spacing, ``(z, y, x)`` in mm, ``None`` for no interpolation; an axis given as
    ``None`` keeps its spacing (2D in-plane interpolation leaves z alone). ``intensity_rounding`` rounds
    interpolated intensities to the nearest multiple (1.0 for CT: whole HU). ``resegmentation_range`` (lower,
    upper; either may be ``None``) and ``outlier_sigma`` (mean +- that many standard deviations) remove voxels from
    the intensity mask only; morphology uses the ROI before re-segmentation.
    """

    aggregations: tuple[str, ...] = ("3D",)
    spacing_mm: tuple[float | None, float | None, float | None] | None = None
    interpolation: Interpolator = "linear"
    roi_interpolation: Interpolator = "linear"
    roi_partial_volume: float = 0.5
    intensity_rounding: float | None = None
    resegmentation_range: tuple[float | None, float | None] | None = None
    outlier_sigma: float | None = None
    texture_discretisation: Discretisation = field(default_factory=lambda: Discretisation("fbn", 32))
    ivh_discretisation: Discretisation = field(default_factory=lambda: Discretisation("none"))
    families: tuple[str, ...] = tuple(FAMILIES)
    intensity_unit: str = "[hnsf'U]"

    def __post_init__(self) -> None:
        bad = [a for a in self.aggregations if a not in DIMS]
        if bad or not self.aggregations:
            raise ConfigError(f"aggregation {bad or '(none)'}: expected one or more of {', '.join(DIMS)}")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ConfigError(f"unknown feature families {unknown}; known: {', '.join(FAMILIES)}")
        for name in ("interpolation", "roi_interpolation"):
            if getattr(self, name) not in INTERPOLATION_ORDER:
                raise ConfigError(f"{name} {getattr(self, name)!r}: expected nearest, linear or cubic")
        if not 0.0 < self.roi_partial_volume <= 1.0:
            raise ConfigError(f"roi_partial_volume {self.roi_partial_volume}: expected a fraction in (0, 1]")
        if self.spacing_mm is not None and (
            len(self.spacing_mm) != 3 or any(s is not None and not s > 0 for s in self.spacing_mm)
        ):
            raise ConfigError(f"spacing_mm {self.spacing_mm}: expected three positive numbers (z, y, x) or None")
        if self.resegmentation_range is not None:
            lo, hi = self.resegmentation_range
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"resegmentation_range {self.resegmentation_range}: lower bound above upper")
        if self.outlier_sigma is not None and not self.outlier_sigma > 0:
            raise ConfigError(f"outlier_sigma {self.outlier_sigma}: expected > 0")

    def with_changes(self, **changes: Any) -> RadiomicsConfig:
        return replace(self, **changes)

    def preset(self) -> str | None:
        """The name of the IBSI reference configuration whose image processing this is, if any."""
        for name, ref in IBSI_CONFIGURATIONS.items():
            if replace(self, families=ref.families, intensity_unit=ref.intensity_unit) == ref:
                return name
        return None

    def describe(self) -> str:
        """The processing in words, e.g. for a report: ``IBSI 1 configuration C: 3D; 2 x 2 x 2 mm ...``."""
        steps = ["/".join(self.aggregations)]
        if self.spacing_mm is None:
            steps.append("no interpolation")
        else:
            z, y, x = self.spacing_mm
            grid = f"{x:g} x {y:g} mm in-plane" if z is None else f"{x:g} x {y:g} x {z:g} mm"
            rounding = f", rounded to {self.intensity_rounding:g}" if self.intensity_rounding else ""
            steps.append(f"{grid}, {self.interpolation} interpolation{rounding}")
        if self.resegmentation_range is not None:
            lo, hi = ("" if v is None else f"{v:g}" for v in self.resegmentation_range)
            steps.append(f"re-segmentation [{lo}, {hi}]")
        if self.outlier_sigma is not None:
            steps.append(f"outliers beyond {self.outlier_sigma:g} SD removed")
        if set(self.families) - {"morphology", "local_intensity", "statistics", "ivh"}:
            steps.append(f"histogram and texture: {self.texture_discretisation.describe()}")
        if "ivh" in self.families:
            steps.append(f"intensity-volume histogram: {self.ivh_discretisation.describe()}")
        steps.append("families " + ", ".join(self.families))
        name = self.preset()
        head = f"IBSI 1 configuration {name}" if name and name != "digital_phantom" else "IBSI 1 processing"
        return f"{head}: {'; '.join(steps)}"


IBSI_CONFIGURATIONS: dict[str, RadiomicsConfig] = {
    # Digital phantom: intensities are already grey levels 1..6 (fixed bin size 1 reproduces them).
    "digital_phantom": RadiomicsConfig(
        aggregations=("2D", "2.5D", "3D"),
        texture_discretisation=Discretisation("fbs", 1.0),
        ivh_discretisation=Discretisation("none"),
        intensity_unit="1",
    ),
    "A": RadiomicsConfig(
        aggregations=("2D", "2.5D"),
        resegmentation_range=(-500.0, 400.0),
        texture_discretisation=Discretisation("fbs", 25.0),
        ivh_discretisation=Discretisation("none"),
    ),
    "B": RadiomicsConfig(
        aggregations=("2D", "2.5D"),
        spacing_mm=(None, 2.0, 2.0),
        interpolation="linear",
        intensity_rounding=1.0,
        resegmentation_range=(-500.0, 400.0),
        texture_discretisation=Discretisation("fbn", 32),
        ivh_discretisation=Discretisation("none"),
    ),
    "C": RadiomicsConfig(
        aggregations=("3D",),
        spacing_mm=(2.0, 2.0, 2.0),
        interpolation="linear",
        intensity_rounding=1.0,
        resegmentation_range=(-1000.0, 400.0),
        texture_discretisation=Discretisation("fbs", 25.0),
        ivh_discretisation=Discretisation("fbs", 2.5),
    ),
    "D": RadiomicsConfig(
        aggregations=("3D",),
        spacing_mm=(2.0, 2.0, 2.0),
        interpolation="linear",
        intensity_rounding=1.0,
        outlier_sigma=3.0,
        texture_discretisation=Discretisation("fbn", 32),
        ivh_discretisation=Discretisation("none"),
    ),
    "E": RadiomicsConfig(
        aggregations=("3D",),
        spacing_mm=(2.0, 2.0, 2.0),
        interpolation="cubic",
        intensity_rounding=1.0,
        resegmentation_range=(-1000.0, 400.0),
        outlier_sigma=3.0,
        texture_discretisation=Discretisation("fbn", 32),
        ivh_discretisation=Discretisation("fbn", 1000),
    ),
}


def _opt_float(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    out = float(value)
    if math.isnan(out):
        return None
    return out


def _discretisation(raw: Any, where: str) -> Discretisation:
    if raw is None or raw == "none":
        return Discretisation("none")
    if isinstance(raw, Mapping):
        if "bin_size" in raw:
            return Discretisation("fbs", float(raw["bin_size"]))
        if "bin_number" in raw:
            return Discretisation("fbn", float(raw["bin_number"]))
        if raw.get("method") in ("none", "fbs", "fbn"):
            return Discretisation(raw["method"], float(raw.get("value", 0.0)))
    raise ConfigError(f"{where}: expected none, {{bin_size: W}} or {{bin_number: N}}, got {raw!r}")


def config_from_mapping(raw: Mapping[str, Any]) -> RadiomicsConfig:
    """A configuration from a model manifest's ``radiomics`` section (or any mapping with the same fields).

    ``preset`` (one of ``IBSI_CONFIGURATIONS``) gives the starting point; the other fields override it::

        radiomics:
          preset: C
          families: [morphology, statistics, glcm]
          spacing_mm: [2, 2, 2]              # z, y, x; null for none
          resegmentation_range: [-1000, 400]
          texture_discretisation: {bin_size: 25}
          ivh_discretisation: {bin_size: 2.5}
    """
    preset = str(raw.get("preset", "C"))
    if preset not in IBSI_CONFIGURATIONS:
        raise ConfigError(f"preset {preset!r}: expected one of {', '.join(IBSI_CONFIGURATIONS)}")
    changes: dict[str, Any] = {}
    if "aggregations" in raw or "aggregation" in raw:
        agg = raw.get("aggregations", raw.get("aggregation"))
        changes["aggregations"] = (str(agg),) if isinstance(agg, str | int | float) else tuple(str(a) for a in agg)
    if "spacing_mm" in raw:
        sp = raw["spacing_mm"]
        changes["spacing_mm"] = None if sp is None else tuple(_opt_float(s) for s in sp)
    for name in ("interpolation", "roi_interpolation", "intensity_unit"):
        if name in raw:
            changes[name] = str(raw[name])
    if "roi_partial_volume" in raw:
        changes["roi_partial_volume"] = float(raw["roi_partial_volume"])
    if "intensity_rounding" in raw:
        changes["intensity_rounding"] = _opt_float(raw["intensity_rounding"])
    if "resegmentation_range" in raw:
        rng = raw["resegmentation_range"]
        changes["resegmentation_range"] = None if rng is None else (_opt_float(rng[0]), _opt_float(rng[1]))
    if "outlier_sigma" in raw:
        changes["outlier_sigma"] = _opt_float(raw["outlier_sigma"])
    for name in ("texture_discretisation", "ivh_discretisation"):
        if name in raw:
            changes[name] = _discretisation(raw[name], name)
    if "families" in raw:
        changes["families"] = tuple(str(f) for f in raw["families"])
    try:
        return replace(IBSI_CONFIGURATIONS[preset], **changes)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"radiomics configuration: {err}") from err
