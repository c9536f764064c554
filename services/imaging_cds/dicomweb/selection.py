"""Choosing the series a model should see, from series summaries (QIDO-RS or local headers) and its manifest rule."""

from __future__ import annotations

from dataclasses import dataclass

from imaging_cds.dicomweb.series import SeriesSummary
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.inference.manifest import SeriesRule


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
