import pytest

from imaging_cds.dicomweb.client import SeriesSummary
from imaging_cds.dicomweb.selection import select_series
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.inference.manifest import SeriesRule

RULE = SeriesRule(modalities=("CT",), body_parts=("CHEST", "LUNG"), min_instances=100, max_slice_spacing_mm=3.0)


def series(uid: str, modality: str = "CT", body: str = "CHEST", n: int = 200) -> SeriesSummary:
    return SeriesSummary(series_uid=uid, modality=modality, body_part=body, description="", n_instances=n)


def test_thinnest_accepted_series_is_chosen() -> None:
    chosen = select_series("1.2", [series("1", n=120), series("2", n=300), series("3", "SR", "", 1)], RULE)
    assert chosen.series_uid == "2"


def test_series_without_body_part_is_accepted() -> None:
    assert select_series("1.2", [series("1", body="")], RULE).series_uid == "1"


def test_head_ct_is_not_analysable_and_says_why() -> None:
    with pytest.raises(NotAnalyzableError, match=r"series 9: body part HEAD") as err:
        select_series("1.2", [series("9", body="HEAD")], RULE)
    assert "study 1.2" in str(err.value)


def test_mr_and_short_series_are_not_analysable() -> None:
    with pytest.raises(NotAnalyzableError, match=r"modality MR.*12 instances"):
        select_series("1.2", [series("1", modality="MR"), series("2", n=12)], RULE)


def test_empty_study_is_not_analysable() -> None:
    with pytest.raises(NotAnalyzableError, match="no series"):
        select_series("1.2", [], RULE)
