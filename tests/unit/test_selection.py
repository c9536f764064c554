"""Series rules from a manifest: leaves, AND/OR/NOT groups, default refusals, and the reasons a study gets."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import yaml

from imaging_cds.config import DEFAULT_MODEL_REPOSITORY
from imaging_cds.dicomweb.rules import RuleError, parse_condition
from imaging_cds.dicomweb.selection import NoSeriesQualifies, evaluate, select_series
from imaging_cds.dicomweb.series import SeriesSummary, orientation_name
from imaging_cds.errors import NotAnalyzableError
from imaging_cds.inference.manifest import SeriesRule, load_manifest, parse_selection

RULE = load_manifest(DEFAULT_MODEL_REPOSITORY / "lung-density").selection


def series(uid: str, **changes: Any) -> SeriesSummary:
    base = SeriesSummary(
        series_uid=uid,
        modality="CT",
        body_part="CHEST",
        description="Chest 1.25 mm",
        n_instances=200,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
        slice_thickness_mm=1.25,
        orientation="AXIAL",
    )
    return replace(base, **changes)


def rule(text: str) -> SeriesRule:
    return SeriesRule(accept=parse_condition(yaml.safe_load(text)))


def test_the_series_with_most_images_among_those_accepted_is_chosen() -> None:
    chosen = select_series(
        "1.2", [series("1", n_instances=120), series("2", n_instances=300), series("3", modality="SR")], RULE
    )
    assert chosen.series_uid == "2"


def test_a_series_without_body_part_or_thickness_is_accepted() -> None:
    assert select_series("1.2", [series("1", body_part="", slice_thickness_mm=None)], RULE).series_uid == "1"


def test_when_no_series_qualifies_each_series_is_listed_with_the_rule_that_rejected_it() -> None:
    study = [
        series("1.1", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), n_instances=2, description="Scout"),
        series("1.2", modality="MR", body_part="HEAD"),
        series("1.3", slice_thickness_mm=5.0),
        series("1.4", orientation="CORONAL", image_type=("DERIVED", "SECONDARY", "MPR")),
        series("1.5", n_instances=40),
    ]
    with pytest.raises(NoSeriesQualifies) as err:
        select_series("9.8.7", study, RULE)
    text = str(err.value)
    assert text.startswith("study 9.8.7: not analysable: no series fits the model's rule")
    reasons = {r.series.series_uid: " ".join(r.reasons) for r in err.value.rejections}
    assert "image type LOCALIZER" in reasons["1.1"] and "images 2, expected at least 100" in reasons["1.1"]
    assert "description 'Scout'" not in reasons["1.1"] or "excludes" in reasons["1.1"]
    assert "modality MR, expected CT" in reasons["1.2"] and "body part HEAD" in reasons["1.2"]
    assert "slice thickness (mm) 5" in reasons["1.3"]
    assert "orientation CORONAL, expected AXIAL" in reasons["1.4"] and "DERIVED/SECONDARY" in reasons["1.4"]
    assert reasons["1.5"] == "images 40, expected at least 100"
    for uid in reasons:
        assert f"series {uid} (" in text


def test_all_any_and_not_combine() -> None:
    r = rule(
        """
        all:
          - modality: CT
          - any:
              - description: '(?i)lung'
              - body_part: [THORAX]
          - not: {description: '(?i)mip'}
        """
    )
    assert not r.failures(series("1", description="LUNG 1mm"))
    assert not r.failures(series("2", description="Abdomen", body_part="THORAX"))
    assert r.failures(series("3", description="Abdomen")) == [
        "none of (description 'Abdomen' does not match '(?i)lung'; body part CHEST, expected THORAX)"
    ]
    assert r.failures(series("4", description="Lung MIP")) == [
        "is description matching '(?i)mip', which the rule excludes"
    ]


def test_localizer_derived_and_secondary_are_refused_unless_asked_for() -> None:
    derived = series("1", image_type=("DERIVED", "PRIMARY", "AXIAL"))
    assert rule("modality: CT").failures(derived) == ["image type DERIVED (not asked for by the model)"]
    assert not rule("image_type: [DERIVED]").failures(derived)


def test_ranges_and_orientation() -> None:
    r = rule("all: [{slice_thickness_mm: [0.5, 2]}, {slices: [50, 400]}, {orientation: [AXIAL, OBLIQUE]}]")
    assert not r.failures(series("1"))
    assert r.failures(series("2", slice_thickness_mm=None, n_instances=401, orientation="SAGITTAL")) == [
        "slice thickness (mm) unstated",
        "images 401, expected 50 to 400",
        "orientation SAGITTAL, expected AXIAL/OBLIQUE",
    ]


def test_frames_of_a_multi_frame_series_count_as_images() -> None:
    enhanced = series("1", n_instances=1, frames_per_instance=240)
    assert select_series("1.2", [enhanced], RULE).series_uid == "1"


@pytest.mark.parametrize(
    ("iop", "name"),
    [
        ((1, 0, 0, 0, 1, 0), "AXIAL"),
        ((1, 0, 0, 0, 0, -1), "CORONAL"),
        ((0, 1, 0, 0, 0, -1), "SAGITTAL"),
        ((1, 0, 0, 0, 0.7071, 0.7071), "OBLIQUE"),
        ((1, 0, 0, 0, 0.9659, 0.2588), "AXIAL"),  # 15 degree gantry tilt is still axial
        (None, ""),
    ],
)
def test_orientation_is_named_from_the_slice_normal(iop: tuple[float, ...] | None, name: str) -> None:
    assert orientation_name(iop) == name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("colour: red", "unknown condition"),
        ("all: []", "non-empty list"),
        ("slices: [1]", "[low, high]"),
        ("orientation: [UPSIDE]", "not among"),
        ("description: '('", "not a regular expression"),
        ("missing: shoe_size", "expected one of"),
    ],
)
def test_a_bad_rule_names_its_part(text: str, message: str) -> None:
    with pytest.raises(RuleError, match="accept"):
        parse_condition(yaml.safe_load(text))
    with pytest.raises(RuleError, match=message):
        parse_condition(yaml.safe_load(text))


def test_the_older_flat_selection_form_still_loads() -> None:
    old = parse_selection(
        {"modalities": ["CT"], "body_parts": ["CHEST"], "min_instances": 100, "max_slice_spacing_mm": 3}
    )
    assert old.quality.min_slices == 100 and old.max_slice_spacing_mm == 3.0
    assert old.failures(series("1", body_part="HEAD")) == [
        "none of (body part HEAD, expected CHEST; body part stated (HEAD))"
    ]
    accepted, rejected = evaluate([series("1"), series("2", modality="MR")], old)
    assert [s.series_uid for s in accepted] == ["1"] and rejected[0].reasons == ("modality MR, expected CT",)


def test_empty_study_is_not_analysable() -> None:
    with pytest.raises(NotAnalyzableError, match="no series"):
        select_series("1.2", [], RULE)
