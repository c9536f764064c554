"""Data-quality checks on a CT series: a structured verdict per series, each check named.

A failed check means the series cannot give trustworthy numbers: the job ends as not analysable with the check's
name and what it found, and no measurement is reported. The checks, in ``CHECKS`` order:

- ``too_few_slices``: fewer images than the model needs (``QualityLimits.min_slices``).
- ``mixed_size``: images of different sizes (rows x columns) or pixel spacings in one series.
- ``mixed_orientation``: images with different ImageOrientationPatient in one series.
- ``duplicate_positions``: two images at one position along the slice normal.
- ``gaps``: a step between neighbouring slices of 1.5 times the usual spacing or more (missing slices).
- ``uneven_spacing``: steps differing from the usual spacing by more than ``spacing_tolerance`` (relative).
- ``slice_spacing``: slices further apart than ``max_slice_spacing_mm``.
- ``gantry_tilt``: slices stacked along a direction tilted from the slice normal (a sheared volume), or a
  GantryDetectorTilt, by more than ``max_gantry_tilt_deg``.
- ``hu_range``: values that are not plausible Hounsfield units: no air in the whole volume (a missing or wrong
  rescale), or many values above the scale (``max_hu_clipped_fraction``).
- ``pixel_padding``: padding (PixelPaddingValue, or values below -1024 HU outside the field of view) covering more
  than ``max_padding_fraction`` of the voxels. Padding below that is set to -1024 HU (air) and reported, so it
  never counts as tissue.

The functions here are pure: they take per-slice facts (``SliceFacts``) and return ``CheckResult`` values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from imaging_cds.errors import NotAnalyzableError

CHECKS = (
    "too_few_slices",
    "mixed_size",
    "mixed_orientation",
    "duplicate_positions",
    "gaps",
    "uneven_spacing",
    "slice_spacing",
    "gantry_tilt",
    "hu_range",
    "pixel_padding",
)
_ORIENTATION_TOL = 1e-3
_DUPLICATE_MM = 1e-2
_GAP_FACTOR = 1.5
AIR_HU = -500  # a voxel at or below this is air (lung parenchyma is about -850, air -1000)


@dataclass(frozen=True)
class QualityLimits:
    """Per model, in ``manifest.yaml`` under ``selection.quality``."""

    min_slices: int = 1
    max_slice_spacing_mm: float = 10.0
    spacing_tolerance: float = 0.05
    max_gantry_tilt_deg: float = 1.0
    max_padding_fraction: float = 0.5
    min_air_fraction: float = 0.005
    max_hu_clipped_fraction: float = 0.01


@dataclass(frozen=True)
class SliceFacts:
    """What the checks need of one image (slice or frame), gathered while its pixels are decoded."""

    key: str  # SOP Instance UID, '#frame' appended for a frame of a multi-frame image
    shape: tuple[int, int]
    position_lps_mm: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing_mm: tuple[float, float]
    gantry_tilt_deg: float
    # Pixel counts, filled in by VolumeBuilder.put as it stores the pixels (a decoder hands over zeros):
    padded: int = 0  # pixels that were padding, set to -1024 HU
    clipped_high: int = 0  # pixels above +3071 HU, clipped
    air: int = 0  # sampled pixels (every 4th row and column) at or below AIR_HU, padding excluded
    sampled: int = 0  # pixels sampled for ``air``


@dataclass(frozen=True)
class CheckResult:
    check: str  # one of CHECKS
    passed: bool
    detail: str  # what was found, in words (no patient data)


@dataclass(frozen=True)
class QualityVerdict:
    """The verdict on one series: every check that ran, in ``CHECKS`` order."""

    series_uid: str
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def failed_checks(self) -> tuple[str, ...]:
        return tuple(r.check for r in self.failed)

    def reason(self) -> str:
        return f"series {self.series_uid} failed quality checks: " + "; ".join(
            f"{r.check}: {r.detail}" for r in self.failed
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "series_uid": self.series_uid,
            "passed": self.passed,
            "checks": [{"check": r.check, "passed": r.passed, "detail": r.detail} for r in self.results],
        }


class QualityCheckFailed(NotAnalyzableError):
    """A series failed quality checks; ``verdict`` says which and why."""

    def __init__(self, study_uid: str, verdict: QualityVerdict) -> None:
        self.verdict = verdict
        super().__init__(study_uid, verdict.reason())


def check_series(
    series_uid: str,
    slices: Sequence[SliceFacts],
    limits: QualityLimits,
    normal: np.ndarray | None,
    positions: np.ndarray | None,
) -> QualityVerdict:
    """Run every check. ``positions``: each slice's position along ``normal`` (mm), sorted ascending; both None
    when the geometry could not be established (mixed sizes or orientations)."""
    results = [_too_few(slices, limits), _mixed_size(slices), _mixed_orientation(slices)]
    if positions is not None and normal is not None and len(positions) > 1:
        steps = np.diff(positions)
        results += _spacing(steps, limits)
        results.append(_tilt(slices, normal, positions, limits))
    results += [_hu_range(slices, limits), _padding(slices, limits)]
    return QualityVerdict(series_uid, tuple(results))


def _too_few(slices: Sequence[SliceFacts], limits: QualityLimits) -> CheckResult:
    n = len(slices)
    ok = n >= max(1, limits.min_slices)
    return CheckResult("too_few_slices", ok, f"{n} images, the model needs at least {max(1, limits.min_slices)}")


def _mixed_size(slices: Sequence[SliceFacts]) -> CheckResult:
    shapes = sorted({s.shape for s in slices})
    spacings = {tuple(round(v, 4) for v in s.pixel_spacing_mm) for s in slices}
    if len(shapes) > 1:
        return CheckResult("mixed_size", False, f"image sizes differ: {', '.join(f'{r}x{c}' for r, c in shapes)}")
    if len(spacings) > 1:
        return CheckResult("mixed_size", False, f"pixel spacings differ: {sorted(spacings)} mm")
    return CheckResult("mixed_size", True, f"all images {shapes[0][0]}x{shapes[0][1]}" if shapes else "no images")


def _mixed_orientation(slices: Sequence[SliceFacts]) -> CheckResult:
    if not slices:
        return CheckResult("mixed_orientation", True, "no images")
    orientations = np.array([s.orientation for s in slices], dtype=float)
    odd = int(np.count_nonzero(np.abs(orientations - orientations[0]).max(axis=1) > _ORIENTATION_TOL))
    if odd:
        return CheckResult("mixed_orientation", False, f"{odd} of {len(slices)} images have another orientation")
    return CheckResult("mixed_orientation", True, "one orientation")


def _spacing(steps: np.ndarray, limits: QualityLimits) -> list[CheckResult]:
    duplicates = int(np.count_nonzero(steps < _DUPLICATE_MM))
    distinct = steps[steps >= _DUPLICATE_MM]
    results = [
        CheckResult(
            "duplicate_positions",
            duplicates == 0,
            f"{duplicates} images share a slice position with another" if duplicates else "no two images coincide",
        )
    ]
    if not len(distinct):
        return results
    usual = float(np.median(distinct))
    gaps = distinct[distinct >= _GAP_FACTOR * usual]
    missing = int(sum(round(g / usual) - 1 for g in gaps))
    results.append(
        CheckResult(
            "gaps",
            not len(gaps),
            (
                f"{len(gaps)} gap(s) between slices ({', '.join(f'{g:.2f}' for g in gaps[:5])} mm where slices are "
                f"{usual:.2f} mm apart): about {missing} slice(s) missing"
            )
            if len(gaps)
            else f"no gap (slices {usual:.2f} mm apart)",
        )
    )
    regular = distinct[distinct < _GAP_FACTOR * usual]
    uneven = regular[np.abs(regular - usual) > limits.spacing_tolerance * usual]
    results.append(
        CheckResult(
            "uneven_spacing",
            not len(uneven),
            (
                f"{len(uneven)} steps differ from {usual:.2f} mm by more than {limits.spacing_tolerance:.0%} "
                f"(from {float(regular.min()):.2f} to {float(regular.max()):.2f} mm)"
            )
            if len(uneven)
            else f"even within {limits.spacing_tolerance:.0%}",
        )
    )
    results.append(
        CheckResult(
            "slice_spacing",
            usual <= limits.max_slice_spacing_mm,
            f"slices {usual:.2f} mm apart, the model accepts at most {limits.max_slice_spacing_mm:g} mm",
        )
    )
    return results


def _tilt(
    slices: Sequence[SliceFacts], normal: np.ndarray, positions: np.ndarray, limits: QualityLimits
) -> CheckResult:
    stated = max((abs(s.gantry_tilt_deg) for s in slices), default=0.0)
    points = np.array([s.position_lps_mm for s in slices], dtype=float)
    span = points.max(axis=0) - points.min(axis=0)
    sheared = 0.0
    if float(np.linalg.norm(span)) > 0:
        # Slices are stacked along the principal direction of their positions; compare it with the normal.
        centred = points - points.mean(axis=0)
        direction = np.linalg.svd(centred, full_matrices=False)[2][0]
        cosine = min(1.0, abs(float(np.dot(direction, normal))))
        sheared = float(np.degrees(np.arccos(cosine)))
    worst = max(stated, sheared)
    ok = worst <= limits.max_gantry_tilt_deg
    return CheckResult(
        "gantry_tilt",
        ok,
        f"slices stacked {sheared:.1f} degrees off the slice normal (GantryDetectorTilt {stated:g}), at most "
        f"{limits.max_gantry_tilt_deg:g} accepted: the volume would be sheared",
    )


def _hu_range(slices: Sequence[SliceFacts], limits: QualityLimits) -> CheckResult:
    sampled = sum(s.sampled for s in slices)
    voxels = sum(s.shape[0] * s.shape[1] for s in slices)
    air = sum(s.air for s in slices) / sampled if sampled else 0.0
    clipped = sum(s.clipped_high for s in slices) / voxels if voxels else 0.0
    if air < limits.min_air_fraction:
        return CheckResult(
            "hu_range",
            False,
            f"{air:.2%} of voxels at or below {AIR_HU} HU: a CT of the chest shows air; rescale missing or wrong",
        )
    if clipped > limits.max_hu_clipped_fraction:
        return CheckResult(
            "hu_range", False, f"{clipped:.2%} of voxels above 3071 HU: rescale slope or intercept wrong"
        )
    return CheckResult("hu_range", True, f"{air:.1%} air, {clipped:.3%} above 3071 HU")


def _padding(slices: Sequence[SliceFacts], limits: QualityLimits) -> CheckResult:
    voxels = sum(s.shape[0] * s.shape[1] for s in slices)
    padded = sum(s.padded for s in slices) / voxels if voxels else 0.0
    return CheckResult(
        "pixel_padding",
        padded <= limits.max_padding_fraction,
        f"{padded:.1%} of voxels are padding (set to -1024 HU), at most {limits.max_padding_fraction:.0%} accepted",
    )
