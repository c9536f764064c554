"""Series rules: which series a model accepts, written in its manifest and evaluated on a ``SeriesSummary``.

A rule is a tree. Leaves test one fact about a series; ``all`` (AND), ``any`` (OR) and ``not`` (NOT) combine them.
In ``manifest.yaml``, under ``selection.accept``::

    all:
      - modality: [CT]
      - any:
          - body_part: [CHEST, LUNG, THORAX]
          - missing: body_part          # the series does not state its body part
          - description: '(?i)chest|thorax|lung'
      - image_type: [ORIGINAL]          # ImageType holds every value listed
      - slice_thickness_mm: [0.5, 3.0]  # inclusive range; null = unbounded
      - slices: [100, null]             # images (frames of a multi-frame image count one each)
      - orientation: [AXIAL]            # from ImageOrientationPatient: AXIAL, CORONAL, SAGITTAL or OBLIQUE
      - not: {description: '(?i)scout|topogram'}

Image types LOCALIZER, DERIVED and SECONDARY are refused unless the rule asks for them (names them in an
``image_type`` leaf), so a scout, a reformat or a screen capture never reaches a model by accident.

Evaluating a rule gives the reasons a series fails it (empty: accepted), in words an operator understands.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_REFUSED_IMAGE_TYPES = ("LOCALIZER", "DERIVED", "SECONDARY")
ORIENTATIONS = ("AXIAL", "CORONAL", "SAGITTAL", "OBLIQUE")
FIELDS = ("modality", "body_part", "description", "image_type", "slice_thickness_mm", "orientation")


class RuleError(ValueError):
    """A rule in a manifest cannot be understood; the message names the part."""


class SeriesFacts(Protocol):
    """What a rule can look at (``dicomweb.series.SeriesSummary`` provides it)."""

    @property
    def modality(self) -> str: ...
    @property
    def body_part(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def image_type(self) -> tuple[str, ...]: ...
    @property
    def slice_thickness_mm(self) -> float | None: ...
    @property
    def orientation(self) -> str: ...
    @property
    def n_images(self) -> int: ...


class Condition(Protocol):
    def failures(self, s: SeriesFacts) -> list[str]:
        """Why the series fails this condition; empty when it holds."""
        ...

    def describe(self) -> str: ...

    def leaves(self) -> Iterator[Condition]: ...


@dataclass(frozen=True)
class OneOf:
    """``modality`` / ``body_part`` / ``orientation``: the series' value is one of ``values`` (case-insensitive)."""

    attribute: str
    values: tuple[str, ...]

    def failures(self, s: SeriesFacts) -> list[str]:
        found = str(getattr(s, self.attribute)).upper()
        if found in self.values:
            return []
        return [f"{_label(self.attribute)} {found or 'unstated'}, expected {'/'.join(self.values)}"]

    def describe(self) -> str:
        return f"{_label(self.attribute)} {'/'.join(self.values)}"

    def leaves(self) -> Iterator[Condition]:
        yield self


@dataclass(frozen=True)
class Missing:
    """The series does not state ``attribute``."""

    attribute: str

    def failures(self, s: SeriesFacts) -> list[str]:
        value = getattr(s, self.attribute)
        if value in ("", None, ()):
            return []
        return [f"{_label(self.attribute)} stated ({_show(value)})"]

    def describe(self) -> str:
        return f"{_label(self.attribute)} unstated"

    def leaves(self) -> Iterator[Condition]:
        yield self


@dataclass(frozen=True)
class Matches:
    """``description``: SeriesDescription matches the regular expression (``re.search``)."""

    pattern: str
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "_compiled", re.compile(self.pattern))
        except re.error as err:
            raise RuleError(f"description: {self.pattern!r} is not a regular expression ({err})") from err

    def failures(self, s: SeriesFacts) -> list[str]:
        if self._compiled.search(s.description):
            return []
        return [f"description {s.description!r} does not match {self.pattern!r}"]

    def describe(self) -> str:
        return f"description matching {self.pattern!r}"

    def leaves(self) -> Iterator[Condition]:
        yield self


@dataclass(frozen=True)
class HasImageType:
    """``image_type``: ImageType (0008,0008) holds every one of ``values``."""

    values: tuple[str, ...]

    def failures(self, s: SeriesFacts) -> list[str]:
        missing = [v for v in self.values if v not in s.image_type]
        if not missing:
            return []
        return [f"image type {_show(s.image_type)} lacks {'/'.join(missing)}"]

    def describe(self) -> str:
        return f"image type with {'/'.join(self.values)}"

    def leaves(self) -> Iterator[Condition]:
        yield self


@dataclass(frozen=True)
class InRange:
    """``slice_thickness_mm`` / ``slices``: the value lies in [low, high] (either end may be open)."""

    attribute: str  # "slice_thickness_mm" or "n_images"
    low: float | None
    high: float | None

    def failures(self, s: SeriesFacts) -> list[str]:
        value = getattr(s, self.attribute)
        if value is None:
            return [f"{_label(self.attribute)} unstated"]
        if (self.low is None or value >= self.low) and (self.high is None or value <= self.high):
            return []
        return [f"{_label(self.attribute)} {value:g}, expected {self._range()}"]

    def _range(self) -> str:
        if self.high is None:
            return f"at least {self.low:g}"
        if self.low is None:
            return f"at most {self.high:g}"
        return f"{self.low:g} to {self.high:g}"

    def describe(self) -> str:
        return f"{_label(self.attribute)} {self._range()}"

    def leaves(self) -> Iterator[Condition]:
        yield self


@dataclass(frozen=True)
class AllOf:
    parts: tuple[Condition, ...]

    def failures(self, s: SeriesFacts) -> list[str]:
        return [reason for part in self.parts for reason in part.failures(s)]

    def describe(self) -> str:
        return " and ".join(_grouped(p) for p in self.parts)

    def leaves(self) -> Iterator[Condition]:
        for p in self.parts:
            yield from p.leaves()


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Condition, ...]

    def failures(self, s: SeriesFacts) -> list[str]:
        reasons = []
        for part in self.parts:
            why = part.failures(s)
            if not why:
                return []
            reasons.append(", ".join(why))
        return [f"none of ({'; '.join(reasons)})"]

    def describe(self) -> str:
        return " or ".join(_grouped(p) for p in self.parts)

    def leaves(self) -> Iterator[Condition]:
        for p in self.parts:
            yield from p.leaves()


@dataclass(frozen=True)
class Not:
    part: Condition

    def failures(self, s: SeriesFacts) -> list[str]:
        return [] if self.part.failures(s) else [f"is {self.part.describe()}, which the rule excludes"]

    def describe(self) -> str:
        return f"not {_grouped(self.part)}"

    def leaves(self) -> Iterator[Condition]:
        yield from self.part.leaves()


@dataclass(frozen=True)
class RefuseImageTypes:
    """The default refusal of LOCALIZER / DERIVED / SECONDARY images (those the rule does not ask for)."""

    values: tuple[str, ...]

    def failures(self, s: SeriesFacts) -> list[str]:
        found = [v for v in self.values if v in s.image_type]
        if not found:
            return []
        return [f"image type {'/'.join(found)} (not asked for by the model)"]

    def describe(self) -> str:
        return f"no {'/'.join(self.values)} image"

    def leaves(self) -> Iterator[Condition]:
        yield self


def with_default_refusals(condition: Condition) -> Condition:
    """``condition`` AND not one of the refused image types the rule does not itself name."""
    asked = {v for leaf in condition.leaves() if isinstance(leaf, HasImageType) for v in leaf.values}
    refused = tuple(v for v in DEFAULT_REFUSED_IMAGE_TYPES if v not in asked)
    if not refused:
        return condition
    return AllOf((condition, RefuseImageTypes(refused)))


def parse_condition(raw: Any, where: str = "accept") -> Condition:
    """A condition from its YAML form (see the module docstring); RuleError names the bad part."""
    if not isinstance(raw, dict) or len(raw) != 1:
        raise RuleError(f"{where}: expected a mapping with one key, found {raw!r}")
    ((key, value),) = raw.items()
    here = f"{where}.{key}"
    if key in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise RuleError(f"{here}: expected a non-empty list of conditions")
        parts = tuple(parse_condition(v, f"{here}[{i}]") for i, v in enumerate(value))
        return AllOf(parts) if key == "all" else AnyOf(parts)
    if key == "not":
        return Not(parse_condition(value, here))
    if key in ("modality", "body_part"):
        return OneOf(key, _upper_list(value, here))
    if key == "orientation":
        values = _upper_list(value, here)
        unknown = [v for v in values if v not in ORIENTATIONS]
        if unknown:
            raise RuleError(f"{here}: {unknown} not among {', '.join(ORIENTATIONS)}")
        return OneOf(key, values)
    if key == "description":
        try:
            return Matches(str(value))
        except RuleError as err:
            raise RuleError(f"{where}.{err}") from err
    if key == "image_type":
        return HasImageType(_upper_list(value, here))
    if key in ("slice_thickness_mm", "slices"):
        if not isinstance(value, list) or len(value) != 2:
            raise RuleError(f"{here}: expected [low, high] (null for an open end)")
        low, high = (None if v is None else float(v) for v in value)
        return InRange("n_images" if key == "slices" else key, low, high)
    if key == "missing":
        if value not in FIELDS:
            raise RuleError(f"{here}: expected one of {', '.join(FIELDS)}")
        return Missing(str(value))
    raise RuleError(f"{here}: unknown condition; known: all, any, not, missing, {', '.join(FIELDS)}, slices")


def _upper_list(value: Any, where: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise RuleError(f"{where}: expected a name or a list of names")
    return tuple(v.upper() for v in items)


def _grouped(c: Condition) -> str:
    text = c.describe()
    return f"({text})" if isinstance(c, AllOf | AnyOf) else text


_LABELS = {
    "modality": "modality",
    "body_part": "body part",
    "description": "description",
    "image_type": "image type",
    "slice_thickness_mm": "slice thickness (mm)",
    "orientation": "orientation",
    "n_images": "images",
}


def _label(attribute: str) -> str:
    return _LABELS.get(attribute, attribute)


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "\\".join(str(v) for v in value) or "unstated"
    return str(value)
