"""Choosing the series a model should see, from series summaries (QIDO-RS or local headers) and its manifest rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from imaging_cds.dicomweb.series import SeriesSummary
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.inference.manifest import ModelManifest, SeriesRule


@dataclass(frozen=True)
class Rejection:
    """A series the rule did not accept, and why (each failed condition, in words)."""

    series: SeriesSummary
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return f"{self.series.label()}: {'; '.join(self.reasons)}"


class NoSeriesQualifies(NotAnalyzableError):
    """No series of the study fits the model's rule; ``rejections`` lists each series and why."""

    def __init__(self, study_uid: str, rule: SeriesRule, rejections: tuple[Rejection, ...]) -> None:
        self.rejections = rejections
        found = " | ".join(r.describe() for r in rejections)
        super().__init__(study_uid, f"no series fits the model's rule [{rule.describe()}]: {found}")


def evaluate(series: list[SeriesSummary], rule: SeriesRule) -> tuple[list[SeriesSummary], list[Rejection]]:
    """The accepted series and the rejected ones with their reasons."""
    accepted, rejected = [], []
    for s in series:
        reasons = rule.failures(s)
        if reasons:
            rejected.append(Rejection(s, tuple(reasons)))
        else:
            accepted.append(s)
    return accepted, rejected


def select_series(study_uid: str, series: list[SeriesSummary], rule: SeriesRule) -> SeriesSummary:
    """The series the rule accepts with the most images (thinnest slices, for a fixed coverage).

    Raises NoSeriesQualifies (a NotAnalyzableError) naming each series and the conditions it failed, so an operator
    sees at once why a study got no report.
    """
    if not series:
        raise NotAnalyzableError(study_uid, "the PACS holds no series for this study")
    accepted, rejected = evaluate(series, rule)
    if accepted:
        return max(accepted, key=lambda s: (s.n_images, s.series_uid))
    raise NoSeriesQualifies(study_uid, rule, tuple(rejected))


@dataclass(frozen=True)
class SeriesPlan:
    """Which models read which series of a study, and the models that accept none of its series."""

    reads: list[tuple[SeriesSummary, list[ModelManifest]]] = field(default_factory=list)
    rejected: list[tuple[ModelManifest, NotAnalyzableError]] = field(default_factory=list)


def plan_series(study_uid: str, series: list[SeriesSummary], models: Sequence[ModelManifest]) -> SeriesPlan:
    """Each model's series (``select_series``), grouped so that a series read by several models is retrieved once."""
    plan = SeriesPlan()
    by_uid: dict[str, tuple[SeriesSummary, list[ModelManifest]]] = {}
    for model in models:
        try:
            chosen = select_series(study_uid, series, model.selection)
        except NotAnalyzableError as err:
            plan.rejected.append((model, err))
            continue
        by_uid.setdefault(chosen.series_uid, (chosen, []))[1].append(model)
    plan.reads.extend(by_uid.values())
    return plan
