"""Choosing the series a model should see, from QIDO-RS summaries and the model's manifest rules."""

from __future__ import annotations

from imaging_cds.dicomweb.client import SeriesSummary
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.inference.manifest import SeriesRule


def select_series(study_uid: str, series: list[SeriesSummary], rule: SeriesRule) -> SeriesSummary:
    """The series the rule accepts with the most instances (thinnest slices, for a fixed coverage).

    Raises NotAnalyzableError naming what each series was and what the rule expects, so an operator sees at once
    why a study got no report.
    """
    if not series:
        raise NotAnalyzableError(study_uid, "the PACS holds no series for this study")
    accepted = [s for s in series if not _rejections(s, rule)]
    if accepted:
        return max(accepted, key=lambda s: s.n_instances)
    found = "; ".join(f"series {s.series_uid}: {', '.join(_rejections(s, rule))}" for s in series)
    raise NotAnalyzableError(study_uid, f"no series fits {rule.describe()} ({found})")


def _rejections(s: SeriesSummary, rule: SeriesRule) -> list[str]:
    reasons = []
    if s.modality.upper() not in rule.modalities:
        reasons.append(f"modality {s.modality or 'missing'}")
    if s.body_part and s.body_part.upper() not in rule.body_parts:
        reasons.append(f"body part {s.body_part}")
    if s.n_instances < rule.min_instances:
        reasons.append(f"{s.n_instances} instances")
    return reasons
